//! Byte-level BPE: the GPT-2 byte alphabet and the merges, on token ids.
//!
//! Merges are looked up by pair of ids in one hash map (rank and result).
//! Within a word the lowest rank merges first, leftmost first among equals,
//! as llama.cpp's `llm_tokenizer_bpe_session` does: short words by scanning
//! their pairs, long ones with a priority queue over a linked list of
//! symbols (the two agree; a unit test holds them to it). A merge whose parts or result are not
//! in the vocabulary still takes part (llama.cpp merges strings); such
//! pieces get ids past the vocabulary and fall back to byte tokens if they
//! survive to the end.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

// === GPT-2 byte alphabet ===

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 stands for itself, the other bytes for U+0100 onwards.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in map.iter_mut().enumerate() {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            byte as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    map
}

/// The inverse of [`byte_to_char`], indexed by code point (all below 324).
pub(crate) fn char_to_byte(byte_to_char: &[char; 256]) -> Vec<Option<u8>> {
    let mut map = vec![None; 324];
    for (byte, &c) in byte_to_char.iter().enumerate() {
        if let Some(slot) = map.get_mut(c as usize) {
            *slot = u8::try_from(byte).ok();
        }
    }
    map
}

/// A token's text in the GPT-2 alphabet, back to the bytes it stands for.
/// Characters outside the alphabet are kept as their own UTF-8.
pub(crate) fn decode_alphabet(text: &str, char_to_byte: &[Option<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte.get(c as usize).copied().flatten() {
            Some(byte) => out.push(byte),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

// === Merge table ===

/// FxHash for the (id, id) keys: the merge lookup is the hot loop of
/// encoding and SipHash would be most of it. Keys are not attacker-chosen
/// beyond pairs of a fixed vocabulary.
#[derive(Default)]
pub(crate) struct PairHasher(u64);

impl Hasher for PairHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type PairMap = HashMap<u64, Merge, BuildHasherDefault<PairHasher>>;

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    result: u32,
}

/// Symbols of the merge alphabet: vocabulary ids, then pieces that occur
/// only as merge results or parts.
#[derive(Clone)]
pub(crate) struct Merges {
    merges: PairMap,
    /// Id of the symbol for each byte (its one-character GPT-2 text).
    byte_symbol: [u32; 256],
    /// Vocabulary size: symbols at or past it are not tokens.
    n_vocab: u32,
    /// Bytes of the symbols past the vocabulary, for the fallback.
    extra: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Merges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merges")
            .field("merges", &self.merges.len())
            .field("extra_symbols", &self.extra.len())
            .finish()
    }
}

impl Merges {
    /// Builds the table from the vocabulary (`text_to_id` in the GPT-2
    /// alphabet) and the merges (`"left right"`, best first).
    pub(crate) fn new(
        text_to_id: &HashMap<String, u32>,
        n_vocab: u32,
        merges: &[&str],
        byte_to_char: &[char; 256],
        char_to_byte: &[Option<u8>],
    ) -> Result<Self, String> {
        let mut extra_ids: HashMap<String, u32> = HashMap::new();
        let mut extra: Vec<Vec<u8>> = Vec::new();
        let mut symbol = |text: &str| -> u32 {
            if let Some(&id) = text_to_id.get(text) {
                return id;
            }
            if let Some(&id) = extra_ids.get(text) {
                return id;
            }
            let id = n_vocab + extra.len() as u32;
            extra_ids.insert(text.to_owned(), id);
            extra.push(decode_alphabet(text, char_to_byte));
            id
        };
        let mut byte_symbol = [0u32; 256];
        for (slot, c) in byte_symbol.iter_mut().zip(byte_to_char) {
            *slot = symbol(c.encode_utf8(&mut [0; 4]));
        }
        let mut table = PairMap::with_capacity_and_hasher(merges.len(), Default::default());
        for (rank, merge) in merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first character.
            let split = merge
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i);
            let Some(split) = split else {
                return Err(format!("merge {rank} ({merge:?}) has no space"));
            };
            let (left, right) = (&merge[..split], &merge[split + 1..]);
            let result = symbol(&format!("{left}{right}"));
            let key = pair_key(symbol(left), symbol(right));
            let rank = u32::try_from(rank).map_err(|_| "too many merges".to_string())?;
            // The first (best) rank wins if a pair is listed twice.
            table.entry(key).or_insert(Merge { rank, result });
        }
        Ok(Self {
            merges: table,
            byte_symbol,
            n_vocab,
            extra,
        })
    }

    /// Merges `word` (raw bytes) and appends its token ids to `out`.
    /// `byte_token` gives the token for a lone byte, for pieces that are not
    /// tokens.
    pub(crate) fn encode_word(
        &self,
        word: &[u8],
        byte_token: &[Option<u32>; 256],
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        match word {
            [] => {}
            [b] => self.emit(self.byte_symbol[usize::from(*b)], byte_token, out),
            _ if word.len() <= SHORT_WORD => self.merge_short(word, byte_token, scratch, out),
            _ => self.merge_long(word, byte_token, scratch, out),
        }
    }

    /// The merge for a pair of symbols, if any.
    fn lookup(&self, left: u32, right: u32) -> Option<Merge> {
        self.merges.get(&pair_key(left, right)).copied()
    }

    /// Short words (nearly all of them): scan the adjacent pairs for the
    /// best rank each round. No heap, and only the two pairs next to a merge
    /// are looked up again.
    fn merge_short(
        &self,
        word: &[u8],
        byte_token: &[Option<u32>; 256],
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        let Scratch { ids, pairs, .. } = scratch;
        ids.clear();
        ids.extend(word.iter().map(|&b| self.byte_symbol[usize::from(b)]));
        pairs.clear();
        pairs.extend(ids.windows(2).map(|w| self.lookup(w[0], w[1])));
        loop {
            // Lowest rank, leftmost among equals (strict `<`).
            let mut best: Option<(usize, Merge)> = None;
            for (at, merge) in pairs.iter().enumerate() {
                if let Some(merge) = merge
                    && best.is_none_or(|(_, b)| merge.rank < b.rank)
                {
                    best = Some((at, *merge));
                }
            }
            let Some((at, merge)) = best else { break };
            ids[at] = merge.result;
            ids.remove(at + 1);
            pairs.remove(at);
            if at < pairs.len() {
                pairs[at] = self.lookup(ids[at], ids[at + 1]);
            }
            if at > 0 {
                pairs[at - 1] = self.lookup(ids[at - 1], ids[at]);
            }
        }
        for &id in ids.iter() {
            self.emit(id, byte_token, out);
        }
    }

    /// Long words: a priority queue of candidate pairs over a linked list
    /// of symbols; entries made stale by an earlier merge are skipped.
    fn merge_long(
        &self,
        word: &[u8],
        byte_token: &[Option<u32>; 256],
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        let Scratch { symbols, queue, .. } = scratch;
        symbols.clear();
        symbols.extend(word.iter().enumerate().map(|(i, &b)| Symbol {
            id: self.byte_symbol[usize::from(b)],
            prev: i.checked_sub(1),
            next: (i + 1 < word.len()).then_some(i + 1),
            alive: true,
        }));
        queue.clear();
        for left in 0..word.len() - 1 {
            self.push_pair(symbols, left, queue);
        }
        while let Some(Reverse(candidate)) = queue.pop() {
            let left = candidate.left as usize;
            // Stale: the left symbol has merged (its id changed or it is
            // gone), or its right neighbour has.
            let l = symbols[left];
            let Some(right) = l.next else { continue };
            if !l.alive || l.id != candidate.left_id || symbols[right].id != candidate.right_id {
                continue;
            }
            let next = symbols[right].next;
            symbols[right].alive = false;
            symbols[left].id = candidate.result;
            symbols[left].next = next;
            if let Some(next) = next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = l.prev {
                self.push_pair(symbols, prev, queue);
            }
            if next.is_some() {
                self.push_pair(symbols, left, queue);
            }
        }
        let mut at = Some(0);
        while let Some(i) = at {
            self.emit(symbols[i].id, byte_token, out);
            at = symbols[i].next;
        }
    }

    /// Queues the pair of `left` and its right neighbour, if they merge.
    fn push_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        queue: &mut BinaryHeap<Reverse<Candidate>>,
    ) {
        let Some(right) = symbols[left].next else {
            return;
        };
        let (left_id, right_id) = (symbols[left].id, symbols[right].id);
        if let (Some(merge), Ok(left)) = (self.lookup(left_id, right_id), u32::try_from(left)) {
            queue.push(Reverse(Candidate {
                rank: merge.rank,
                left,
                left_id,
                right_id,
                result: merge.result,
            }));
        }
    }

    fn emit(&self, symbol: u32, byte_token: &[Option<u32>; 256], out: &mut Vec<u32>) {
        if symbol < self.n_vocab {
            out.push(symbol);
            return;
        }
        // Not a token: its bytes one by one, skipping bytes that have no
        // token either (llama.cpp does the same).
        if let Some(bytes) = self.extra.get((symbol - self.n_vocab) as usize) {
            out.extend(bytes.iter().filter_map(|&b| byte_token[usize::from(b)]));
        }
    }
}

/// Words up to this many bytes merge by scanning ([`Merges::merge_short`]):
/// quadratic, but cheaper than a heap at this size.
const SHORT_WORD: usize = 32;

/// Buffers for [`Merges::encode_word`], reused across the words of a text.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    ids: Vec<u32>,
    pairs: Vec<Option<Merge>>,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<Candidate>>,
}

#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// A queued merge; ordered by rank, then position (leftmost first). The
/// right symbol is the left one's neighbour, so only its id is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: u32,
    left_id: u32,
    right_id: u32,
    result: u32,
}

// === Tests ===

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

    use super::*;

    #[test]
    fn alphabet_round_trips_every_byte() {
        let to_char = byte_to_char();
        let to_byte = char_to_byte(&to_char);
        assert_eq!(to_char[b' ' as usize], 'Ġ');
        assert_eq!(to_char[b'\n' as usize], 'Ċ');
        assert_eq!(to_char[b'a' as usize], 'a');
        for byte in 0..=255u8 {
            let text = to_char[byte as usize].to_string();
            assert_eq!(decode_alphabet(&text, &to_byte), [byte]);
        }
    }

    /// A toy vocabulary where "ab" is not a token but "abc" is.
    #[test]
    fn merges_go_through_pieces_that_are_not_tokens() {
        let to_char = byte_to_char();
        let to_byte = char_to_byte(&to_char);
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for (i, c) in to_char.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        vocab.insert("abc".into(), 256);
        vocab.insert("bb".into(), 257);
        let merges = Merges::new(&vocab, 258, &["a b", "ab c", "b b"], &to_char, &to_byte).unwrap();
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = Some(b as u32);
        }
        let encode = |word: &[u8]| {
            let mut out = Vec::new();
            merges.encode_word(word, &byte_token, &mut Scratch::default(), &mut out);
            out
        };
        assert_eq!(encode(b"abc"), [256]);
        // "ab" survives as a non-token piece and falls back to its bytes.
        assert_eq!(encode(b"abb"), [97, 98, 98]);
        assert_eq!(encode(b"bbb"), [257, 98]);
    }

    /// The scan (short words) and the heap (long words) merge alike,
    /// including ties between equal ranks and pieces that are not tokens.
    #[test]
    fn short_and_long_paths_agree() {
        let to_char = byte_to_char();
        let to_byte = char_to_byte(&to_char);
        let mut vocab: HashMap<String, u32> = HashMap::new();
        for (i, c) in to_char.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        let merges = [
            "a a", "a b", "b a", "aa a", "ab a", "b b", "c a", "ca b", "bb c", "aa b", "aab aa",
            "c c", "cc c", "ab ab", "ba ba", "abab a",
        ];
        for merge in &merges {
            let text = merge.replace(' ', "");
            // Leave some results out of the vocabulary.
            if text.len() % 3 != 0 {
                let id = vocab.len() as u32;
                vocab.entry(text).or_insert(id);
            }
        }
        let n_vocab = vocab.len() as u32;
        let table = Merges::new(&vocab, n_vocab, &merges, &to_char, &to_byte).unwrap();
        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            *slot = Some(b as u32);
        }
        let mut seed = 0x2545_f491_u64;
        let mut scratch = Scratch::default();
        for round in 0..2000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = 2 + (seed >> 33) as usize % 40;
            let word: Vec<u8> = (0..len)
                .map(|i| b"abc"[((seed >> (i % 60)) as usize + i * 7) % 3])
                .collect();
            let (mut short, mut long) = (Vec::new(), Vec::new());
            table.merge_short(&word, &byte_token, &mut scratch, &mut short);
            table.merge_long(&word, &byte_token, &mut scratch, &mut long);
            assert_eq!(
                short,
                long,
                "round {round}: {:?}",
                String::from_utf8_lossy(&word)
            );
        }
    }
}
