//! The text the injection rules read: lowercase words separated by single
//! spaces, with the usual disguises undone.
//!
//! * invisible characters (zero-width spaces and joiners, soft hyphens,
//!   bidi controls, variation selectors, combining marks) are dropped, so
//!   `ig\u{200b}nore` reads `ignore`;
//! * Unicode tag characters (U+E0020–E007E, "ASCII smuggling") are read as
//!   the ASCII they encode;
//! * look-alike letters (Cyrillic and Greek homoglyphs, fullwidth forms,
//!   mathematical bold/italic letters, circled letters, small capitals) and
//!   accented Latin letters fold to plain ASCII;
//! * inside a word that has a letter, leetspeak digits and symbols fold to
//!   letters (`1gn0r3` → `ignore`, `@ll` → `all`, `pa$$` → `pass`);
//! * `l` and `i` fold to one letter (`i`), so `1`, `|`, `l` and `I` all
//!   read the same; the rule patterns are folded the same way;
//! * apostrophes vanish (`don't` → `dont`); every other run of punctuation
//!   and whitespace becomes one space.
//!
//! The result starts and ends with a space, so rules mark word boundaries
//! with spaces.

/// Shortest run of base64 characters worth decoding (18 bytes of text).
pub(super) const MIN_BASE64: usize = 24;
/// Runs are looked for only in text with a word this long.
const LONG_WORD: usize = 16;

/// Normalised text and what the scan noticed on the way.
#[derive(Debug, Default)]
pub(super) struct Normalized {
    /// Folded words, one space between, a space at each end.
    pub(super) words: String,
    /// The longest run of one-character words (`i g n o r e`).
    pub(super) max_single_run: usize,
    /// Byte ranges of the original text that are runs of at least
    /// [`MIN_BASE64`] base64 characters (standard or URL-safe alphabet),
    /// looked for only when some word is [`LONG_WORD`] bytes or longer.
    pub(super) base64_runs: Vec<(usize, usize)>,
}

impl Normalized {
    /// The words with every space removed, for spaced-out text.
    pub(super) fn squashed(&self) -> String {
        self.words.chars().filter(|&c| c != ' ').collect()
    }
}

// What one ASCII byte is to the normaliser: a table entry whose low seven
// bits are the folded letter, or one of the classes below, and whose top
// bit says whether the byte belongs to the base64 alphabets.
/// Ends the word.
const SPACE: u8 = 0;
/// A digit (leetspeak inside a word with letters).
const DIGIT: u8 = 1;
/// `@ $ | !`: leetspeak inside a word, punctuation elsewhere.
const SYMBOL: u8 = 2;
/// Dropped without splitting the word (`'`, `` ` ``).
const DROP: u8 = 3;
/// Set on bytes of the standard and URL-safe base64 alphabets.
const BASE64: u8 = 0x80;

const fn ascii_entry(b: u8) -> u8 {
    let class = match b {
        b'l' | b'L' => b'i',
        b'a'..=b'z' => b,
        b'A'..=b'Z' => b + 32,
        b'0'..=b'9' => DIGIT,
        b'@' | b'$' | b'|' | b'!' => SYMBOL,
        b'\'' | b'`' => DROP,
        _ => SPACE,
    };
    let base64 = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_');
    if base64 { class | BASE64 } else { class }
}

static TABLE: [u8; 128] = {
    let mut table = [SPACE; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = ascii_entry(b as u8);
        b += 1;
    }
    table
};

/// Builds the words, one byte or char at a time; ASCII (most text) takes
/// a table lookup and a push.
struct Builder {
    out: Vec<u8>,
    /// Where the current word starts in `out`.
    word: usize,
    letters: bool,
    symbols: bool,
    non_ascii: bool,
    run: usize,
    max_run: usize,
    /// The longest word so far, in bytes.
    longest: usize,
}

impl Builder {
    /// Adds an ASCII byte given its table entry.
    #[inline]
    fn ascii(&mut self, b: u8, entry: u8) {
        match entry & !BASE64 {
            SPACE => self.end_word(),
            DIGIT | SYMBOL => {
                self.out.push(b);
                self.symbols = true;
            }
            DROP => {}
            letter => {
                self.out.push(letter);
                self.letters = true;
            }
        }
    }

    fn other(&mut self, c: char) {
        if let Some(f) = fold(c) {
            if f.is_ascii() {
                self.ascii(f as u8, TABLE[usize::from(f as u8 & 0x7f)]);
            } else {
                let mut buf = [0u8; 4];
                self.out
                    .extend_from_slice(f.encode_utf8(&mut buf).as_bytes());
                self.non_ascii = true;
                self.letters |= f.is_alphabetic();
            }
        } else if c == '\u{2019}' {
            // A typographic apostrophe, like `'`.
        } else {
            self.end_word();
        }
    }

    /// Folds leetspeak in the word just written (digits and symbols to
    /// letters when the word has a letter; symbols dropped otherwise), then
    /// closes it with a space.
    fn end_word(&mut self) {
        if self.out.len() == self.word {
            return;
        }
        if self.symbols {
            let (start, len) = (self.word, self.out.len());
            let mut w = start;
            for r in start..len {
                let b = self.out[r];
                let next_is_word = self
                    .out
                    .get(r + 1)
                    .is_some_and(|&n| n.is_ascii_alphanumeric() || n >= 0x80);
                if let Some(m) = fold_symbol(b, self.letters, next_is_word) {
                    self.out[w] = m;
                    w += 1;
                }
            }
            self.out.truncate(w);
        }
        let word = &self.out[self.word..];
        self.longest = self.longest.max(word.len());
        if !word.is_empty() {
            let chars = if self.non_ascii {
                word.iter().filter(|&&b| b & 0xC0 != 0x80).count()
            } else {
                word.len()
            };
            if chars == 1 {
                self.run += 1;
                self.max_run = self.max_run.max(self.run);
            } else {
                self.run = 0;
            }
            self.out.push(b' ');
        }
        self.word = self.out.len();
        self.letters = false;
        self.symbols = false;
        self.non_ascii = false;
    }
}

/// A digit or symbol in a word: its leetspeak letter when the word has a
/// letter, kept (digits) or dropped (symbols) when not.
fn fold_symbol(b: u8, letters: bool, next_is_word: bool) -> Option<u8> {
    match b {
        b'0'..=b'9' if letters => Some(leet_digit(b as char) as u8),
        b'@' if letters => Some(b'a'),
        b'$' if letters => Some(b's'),
        b'|' | b'!' if letters && next_is_word => Some(b'i'),
        b'@' | b'$' | b'|' | b'!' => None,
        b => Some(b),
    }
}

pub(super) fn normalize(text: &str) -> Normalized {
    let bytes = text.as_bytes();
    let mut b = Builder {
        out: Vec::with_capacity(text.len() + 2),
        word: 1,
        letters: false,
        symbols: false,
        non_ascii: false,
        run: 0,
        max_run: 0,
        longest: 0,
    };
    b.out.push(b' ');
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte < 0x80 {
            b.ascii(byte, TABLE[usize::from(byte)]);
            i += 1;
            continue;
        }
        let Some(c) = text.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        i += c.len_utf8();
        match c {
            // Tag characters spell out hidden ASCII.
            '\u{E0020}'..='\u{E007E}' => {
                let ascii = (u32::from(c) - 0xE0000) as u8;
                b.ascii(ascii, TABLE[usize::from(ascii & 0x7f)]);
            }
            c if is_invisible(c) => {}
            c => b.other(c),
        }
    }
    b.end_word();
    // Base64 of a sentence has a long word between its `+`, `/` and
    // padding; text without one has no payload worth decoding.
    let base64_runs = if b.longest >= LONG_WORD {
        base64_runs(bytes)
    } else {
        Vec::new()
    };
    let words = String::from_utf8(b.out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    Normalized {
        words,
        max_single_run: b.max_run,
        base64_runs,
    }
}

/// The runs of at least [`MIN_BASE64`] base64 bytes.
fn base64_runs(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let base64 = b < 0x80 && TABLE[usize::from(b)] & BASE64 != 0;
        if !base64 {
            if i - start >= MIN_BASE64 {
                runs.push((start, i));
            }
            start = i + 1;
        }
    }
    if bytes.len() - start.min(bytes.len()) >= MIN_BASE64 {
        runs.push((start, bytes.len()));
    }
    runs
}

/// A digit read as the letter it stands for in leetspeak.
fn leet_digit(c: char) -> char {
    match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        c => c,
    }
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}' | '\u{E0000}'..='\u{E001F}'
        | '\u{E007F}' | '\u{E0100}'..='\u{E01EF}')
}

/// The folded form of a letter or digit; `None` for anything else.
pub(super) fn fold(c: char) -> Option<char> {
    if c.is_ascii() {
        return match c.to_ascii_lowercase() {
            'l' => Some('i'),
            c if c.is_ascii_alphanumeric() => Some(c),
            _ => None,
        };
    }
    let cp = u32::from(c);
    // Fullwidth ASCII.
    if (0xFF01..=0xFF5E).contains(&cp) {
        return char::from_u32(cp - 0xFEE0).and_then(fold);
    }
    // Mathematical alphanumeric letters: blocks of 52 (A–Z, a–z).
    if (0x1D400..=0x1D6A3).contains(&cp) {
        let letter = ((cp - 0x1D400) % 52 % 26) as u8;
        return fold(char::from(b'a' + letter));
    }
    // Mathematical digits: blocks of 10.
    if (0x1D7CE..=0x1D7FF).contains(&cp) {
        return Some(char::from(b'0' + ((cp - 0x1D7CE) % 10) as u8));
    }
    // Circled letters.
    if (0x24B6..=0x24E9).contains(&cp) {
        return fold(char::from(b'a' + ((cp - 0x24B6) % 26) as u8));
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    let folded = match lower {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' | 'а' | 'α' | 'ᴀ' => 'a',
        'в' | 'β' | 'ʙ' => 'b',
        'ç' | 'ć' | 'č' | 'с' | 'ϲ' | 'ᴄ' => 'c',
        'ԁ' | 'ď' | 'ᴅ' => 'd',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' | 'е' | 'ё' | 'ε' | 'ᴇ' => 'e',
        'ɡ' | 'ğ' | 'ɢ' => 'g',
        'һ' | 'н' | 'ʜ' => 'h',
        'ì' | 'í' | 'î' | 'ï' | 'ı' | 'ī' | 'і' | 'ї' | 'ι' | 'ɪ' | 'ł' | 'ӏ' | 'ʟ' => {
            'i'
        }
        'ј' | 'ᴊ' => 'j',
        'к' | 'κ' | 'ᴋ' => 'k',
        'м' | 'ᴍ' => 'm',
        'ñ' | 'ń' | 'ň' | 'η' | 'ɴ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' | 'о' | 'ο' | 'ᴏ' => 'o',
        'р' | 'ρ' | 'ᴘ' => 'p',
        'ԛ' => 'q',
        'ř' | 'ʀ' => 'r',
        'ś' | 'š' | 'ş' | 'ѕ' | 'ꜱ' => 's',
        'т' | 'τ' | 'ť' | 'ᴛ' => 't',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' | 'υ' | 'ᴜ' => 'u',
        'ν' | 'ᴠ' => 'v',
        'ԝ' | 'ᴡ' => 'w',
        'х' | 'χ' => 'x',
        'ý' | 'ÿ' | 'у' | 'ʏ' => 'y',
        'ž' | 'ź' | 'ż' | 'ᴢ' => 'z',
        c if c.is_alphanumeric() => c,
        _ => return None,
    };
    Some(folded)
}

/// Folds the literal letters of a rule pattern the way [`normalize`] folds
/// text, leaving regex syntax (and whatever follows a backslash) alone.
pub(super) fn fold_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut escaped = false;
    for (i, &c) in chars.iter().enumerate() {
        // Whether the alphanumeric run around `i` has a letter.
        let in_word = || {
            let left = chars[..i]
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric());
            let right = chars[i..].iter().take_while(|c| c.is_ascii_alphanumeric());
            left.chain(right).any(char::is_ascii_alphabetic)
        };
        if escaped {
            out.push(c);
        } else if c.is_ascii_digit() {
            // A digit inside a word (`base64`) folds like leetspeak in
            // text; a quantifier's digits (`{0,3}`) stay.
            if in_word() {
                out.push(leet_digit(c));
            } else {
                out.push(c);
            }
        } else if c.is_alphabetic() {
            out.push(fold(c).unwrap_or(c));
        } else {
            out.push(c);
        }
        escaped = c == '\\' && !escaped;
    }
    out
}
