//! The injection rules: a name, a category, a weight and a pattern.
//!
//! Word rules read the normalised text (see `normalize.rs`): lowercase
//! ASCII-folded words between single spaces, so a space in a pattern is a
//! word boundary and `(?: [^ ]+){0,3}` skips up to three words. Patterns
//! are written in plain lowercase and folded like the text at compile time
//! (`all` becomes `aii`), so they read as what they match. Rules marked
//! `squash` are also tried with every space removed, on text that was
//! spelled out letter by letter.
//!
//! Raw rules read the original text: chat-template tokens and markup that
//! normalisation would erase.
//!
//! Weights combine as independent evidence (`1 − Π(1 − w)`); a rule strong
//! enough to decide alone has a weight ≥ the threshold (0.5), a weak signal
//! (a mention of "developer mode", a `System:` line) stays below it and
//! only counts together with another.

use std::sync::LazyLock;

use regex::RegexSet;
use regex::bytes::RegexSet as BytesRegexSet;

use super::InjectionCategory::{
    self, DataExfiltration, EncodedPayload, InstructionOverride, Jailbreak, PromptExfiltration,
    RoleInjection,
};
use super::normalize::fold_pattern;
use super::precheck::Precheck;

/// One rule.
#[derive(Debug)]
pub(super) struct Rule {
    pub(super) name: &'static str,
    pub(super) category: InjectionCategory,
    pub(super) weight: f32,
    pub(super) pattern: &'static str,
    /// Also tried on the squashed text.
    pub(super) squash: bool,
}

const fn rule(
    name: &'static str,
    category: InjectionCategory,
    weight: f32,
    pattern: &'static str,
    squash: bool,
) -> Rule {
    Rule {
        name,
        category,
        weight,
        pattern,
        squash,
    }
}

/// Verbs that tell a model to drop what it was told.
macro_rules! override_verb {
    () => {
        "(?:ignore|disregard|forget|override|bypass|overlook|discard|abandon|drop)"
    };
}

/// "your", also in chat-speak.
macro_rules! your {
    () => {
        "(?:your|ur|yr)"
    };
}

/// Nouns for what a model was told.
macro_rules! told {
    () => {
        "(?:instructions?|prompts?|rules|directions|directives|guidelines|guidance|commands|constraints|policies|programming|restrictions|filters|guardrails|context|training|orders|system message)"
    };
}

pub(super) const WORD_RULES: &[Rule] = &[
    // --- instruction override ---
    rule(
        "override_previous_instructions",
        InstructionOverride,
        0.9,
        concat!(
            " ",
            override_verb!(),
            " (?:all |any |every )?(?:of )?(?:the |",
            your!(),
            " |these |those |its )?(?:previous|prior|above|earlier|preceding|foregoing|former|original|initial|old|existing|system|developer|safety|aforementioned|hidden|default|current)(?: [^ ]+)? ",
            told!(),
            " "
        ),
        true,
    ),
    rule(
        "override_all_instructions",
        InstructionOverride,
        0.85,
        concat!(
            " ",
            override_verb!(),
            " (?:all|any|every)(?: of)?(?: the| your)? (?:rule|",
            told!(),
            ") "
        ),
        true,
    ),
    rule(
        "override_your_instructions",
        InstructionOverride,
        0.85,
        concat!(
            " ",
            override_verb!(),
            " ",
            your!(),
            " (?:[^ ]+ )?",
            told!(),
            " "
        ),
        true,
    ),
    rule(
        "override_given_instructions",
        InstructionOverride,
        0.8,
        concat!(
            " ",
            override_verb!(),
            " (?:all |any |the |every )?",
            told!(),
            "(?: [^ ]+){0,4} (?:you were given|you ve been given|you have been given|you were told|your creators?|your developers?|they gave you|given to you|set for you|you received) "
        ),
        true,
    ),
    rule(
        "override_user_request",
        InstructionOverride,
        0.7,
        " (?:ignore|disregard|forget|override) (?:the |this |what )?(?:users?|user s|human s|humans) (?:request|question|instructions?|message|prompt|query|task|asked|wants) ",
        false,
    ),
    rule(
        "addressed_to_ai",
        InstructionOverride,
        0.4,
        " (?:note to|attention|message for|message to|instructions for|hey|dear) (?:the |any |all )?(?:ai|assistant|assistants|llm|llms|language model|chatbot|ai agents?|ai models?|agents?) | (?:if you are|you are reading this as) (?:an |a )?(?:ai|llm|language model|assistant|chatbot) ",
        false,
    ),
    rule(
        "authority_instructions",
        InstructionOverride,
        0.7,
        " (?:new|updated|revised|real|important|urgent|additional) (?:system )?(?:instructions|rules|directives|orders|commands) (?:from|by) (?:the |your |ur )?(?:admin|administrator|administrators|developer|developers|system|operator|owner|creator|creators|openai|anthropic|security team|it department) ",
        false,
    ),
    rule(
        "ignore_above_and",
        InstructionOverride,
        0.85,
        " (?:ignore|disregard|forget) (?:all |everything |the |that )?(?:above|previous|prior|preceding|before)(?: (?:text|content|input|message|directions|and))? (?:and |then )?(?:instead|say|print|output|write|tell|respond|reply|translate|just|only|repeat|answer|do) ",
        true,
    ),
    rule(
        "forget_everything_before",
        InstructionOverride,
        0.85,
        " (?:ignore|disregard|forget) (?:everything|all|anything)(?: (?:that was|that is|you were|you have been|you ve been|that you were|i|we))?(?: (?:written|said|stated|told|given|written down|shown|taught|learned|know))? (?:above|before|prior|previously|so far|until now|up to now|earlier|to you) ",
        true,
    ),
    rule(
        "forget_everything",
        InstructionOverride,
        0.35,
        " forget everything ",
        true,
    ),
    rule(
        "new_instructions",
        InstructionOverride,
        0.6,
        concat!(
            " ",
            your!(),
            " (?:new|real|actual|updated|true) (?:instructions|rules|directives?|task|objective|orders) (?:are|is|will be|follow) "
        ),
        false,
    ),
    rule(
        "from_now_on_you",
        InstructionOverride,
        0.3,
        " from now on (?:you (?:will|must|are|shall|should|have to|can)|your) ",
        false,
    ),
    rule(
        "override_multilingual",
        InstructionOverride,
        0.9,
        concat!(
            "(?:",
            // Spanish, Portuguese, Italian.
            " (?:ignora|ignore|ignorar|olvida|olvide|descarta|esqueca|esquece|desconsidere|dimentica|ignorate) (?:todas |todos |tutte |tutti )?(?:las |los |as |os |le |tus |sus |suas )?(?:instrucciones|indicaciones|reglas|ordenes|instrucoes|regras|orientacoes|istruzioni|regole|indicazioni) (?:anteriores|previas|de arriba|del sistema|originales|do sistema|acima|originais|precedenti|di sistema|originali|sopra) ",
            // Spanish and Portuguese "everything before".
            "| (?:ignora|olvida|ignore|esqueca) todo (?:lo )?(?:anterior|que te dijeron|o que foi dito) ",
            // French.
            "| (?:ignore|ignorez|ignores|oublie|oubliez) (?:toutes |tous )?(?:les |tes |vos )?(?:instructions|consignes|regles|directives|indications) (?:precedentes|anterieures|ci dessus|du systeme|initiales|originales) ",
            "| (?:ignore|ignorez|oublie|oubliez) tout ce qui (?:precede|a ete dit) ",
            // German.
            "| (?:ignoriere|ignorieren sie|ignorier|vergiss|vergessen sie|missachte) (?:alle (?:deine |ihre |die )?(?:vorherigen |bisherigen |obigen |vorigen |fruheren )?|(?:die |deine |ihre )?(?:vorherigen|bisherigen|obigen|vorigen|vorangegangenen|fruheren|ursprunglichen) )(?:anweisungen|instruktionen|regeln|befehle|vorgaben|anordnungen) ",
            "| vergiss alles (?:was|bisher|vorher|davor) ",
            // Dutch.
            "| (?:negeer|vergeet) (?:alle )?(?:de |je |jouw )?(?:vorige|eerdere|voorgaande|bovenstaande|oorspronkelijke) (?:instructies|regels|opdrachten) ",
            // Russian.
            "| (?:игнорируй|игнорируйте|проигнорируй|забудь|забудьте) (?:все )?(?:предыдущие |прежние |прошлые |системные |свои |твои )?(?:инструкции|указания|правила|команды) ",
            // Chinese, Japanese, Korean (no spaces between words; the
            // skips count bytes, three per character).
            "|(?:忽略|无视|忽视|忘记|忘掉|不要理会)[^ ]{0,12}(?:之前|以前|先前|上面|上述|前面|所有|全部|你的|系统)[^ ]{0,12}(?:指令|指示|说明|规则|提示)",
            "|(?:以前|前|上記|これまで)の[^ ]{0,18}(?:指示|命令|ルール|指令)を[^ ]{0,9}(?:無視|忘れ)",
            "|(?:이전|앞의|위의|모든)[^ ]{0,12} ?(?:지시|지침|명령|규칙)[^ ]{0,9} ?(?:무시|잊어)",
            ")"
        ),
        false,
    ),
    rule(
        "policy_bypass",
        InstructionOverride,
        0.55,
        " (?:bypass|ignore|violate|break|circumvent|evade) (?:your |the |all |any |its )?(?:openai |anthropic |content |safety |ethical |moral )?(?:policy|policies|filters?|safeguards|guardrails|restrictions|censorship|alignment) ",
        false,
    ),
    // --- jailbreak / role-play ---
    rule(
        "do_anything_now",
        Jailbreak,
        0.9,
        " (?:do anything now|dan mode|(?:you are|you re|youre|act as|pretend to be|become|now called|named) (?:now )?(?:a |the )?dan) ",
        true,
    ),
    rule(
        "no_restrictions_roleplay",
        Jailbreak,
        0.85,
        " (?:pretend|imagine|act as if|act like|suppose|assume) (?:that )?you (?:have|had|are under|were under|are bound by|were bound by|have got) no (?:[^ ]+ )?(?:restrictions|rules|limits|limitations|filters|guidelines|constraints|boundaries|policies|censorship|ethics|morals) ",
        true,
    ),
    rule(
        "unrestricted_persona",
        Jailbreak,
        0.8,
        " (?:you are|you re|youre|you have become|you will be|act as|acting as|become|play|roleplay as|respond as|as) (?:now )?(?:an? |the )?(?:completely |totally |fully )?(?:unrestricted|unfiltered|uncensored|unbound|unlimited|amoral|unaligned|jailbroken|unchained|unhinged|lawless) ",
        true,
    ),
    rule(
        "ai_without_limits",
        Jailbreak,
        0.75,
        " (?:ai|assistant|model|chatbot|bot|version of yourself|persona|character) (?:without|with no|free of|free from|that has no|who has no|that ignores|that ignores all) (?:any |all )?(?:[^ ]+ )?(?:limitations|limits|restrictions|rules|filters?|guidelines|boundaries|ethics|morals|censorship|safeguards) ",
        false,
    ),
    rule(
        "developer_mode_enabled",
        Jailbreak,
        0.75,
        " (?:developer mode (?:enabled|activated|output|response|is now)|(?:chatgpt|gpt|claude|ai|assistant|model|you|yourself)(?: [^ ]+){0,3} (?:with|in|into) developer mode|(?:enable|activate|enter|simulate|switch to) developer mode (?:for|as|and)) ",
        false,
    ),
    rule("developer_mode", Jailbreak, 0.3, " developer mode ", false),
    rule(
        "not_bound_by_rules",
        Jailbreak,
        0.75,
        " (?:no longer|not|never|arent|are not|isnt|is not) (?:bound|restricted|limited|constrained|governed) by (?:any |your |the |openai s |openais |anthropic s )?(?:[^ ]+ )?(?:rules|guidelines|policies|policy|restrictions|openai|anthropic|filters|ethics) ",
        false,
    ),
    rule(
        "jailbreak_mention",
        Jailbreak,
        0.4,
        " (?:jailbreak|jailbroken|jailbreaking) ",
        false,
    ),
    rule(
        "evil_persona",
        Jailbreak,
        0.5,
        " (?:evil|malicious|unethical|rogue|dark|opposite|chaos|sudo|god mode) (?:ai|assistant|chatbot|twin|mode|version|confidant|persona|alter ego) ",
        false,
    ),
    rule(
        "never_refuse",
        Jailbreak,
        0.3,
        " (?:never|dont|do not|must not|will not|wont|cannot|can not) (?:ever )?(?:refuse|decline|reject|say no|say you cant|say that you cant) ",
        false,
    ),
    rule(
        "no_restrictions_weak",
        Jailbreak,
        0.3,
        " (?:without|with no|free of|free from|no) (?:any )?(?:ethical |moral |content |safety )?(?:restrictions|filters|censorship|limitations|safeguards|guardrails|rules) ",
        false,
    ),
    rule(
        "stay_in_character",
        Jailbreak,
        0.25,
        " (?:stay|remain) in character ",
        false,
    ),
    // --- system prompt exfiltration ---
    rule(
        "reveal_system_prompt",
        PromptExfiltration,
        0.85,
        " (?:repeat|reveal|print|show|display|output|tell|give|share|leak|dump|write out|write down|recite|disclose|list|spell out|paste|provide|expose|return|echo|what is|what s|whats|what was|what are|what were)(?: me| us)?(?: all| exactly| verbatim| word for word)?(?: of)? (?:the|your)(?: [^ ]+){0,3} (?:system prompt|system message|initial prompt|hidden prompt|original prompt|pre prompt|preprompt|secret instructions|hidden instructions|initial instructions|original instructions|system instructions|developer instructions|developer message|prompt above|instructions above|confidential instructions) ",
        true,
    ),
    rule(
        "reveal_your_instructions",
        PromptExfiltration,
        0.8,
        concat!(
            " (?:repeat|reveal|print|show|display|output|tell|give|share|leak|dump|recite|disclose|list|spell out|paste|expose|return|echo)(?: me| us)?(?: all| exactly| verbatim| word for word)?(?: of)? ",
            your!(),
            " (?:[^ ]+ ){0,2}",
            told!(),
            " "
        ),
        true,
    ),
    rule(
        "what_were_you_told",
        PromptExfiltration,
        0.7,
        " what (?:were|have|did) you (?:been )?(?:told|instructed|programmed|asked|given)(?: to do| to say)?(?: before| at the start| earlier| initially| by| in your| above|) ",
        false,
    ),
    rule(
        "repeat_text_above",
        PromptExfiltration,
        0.75,
        " (?:repeat|print|output|copy|echo|recite|reproduce|return|write)(?: back)?(?: all| exactly| verbatim)? (?:the |all |every )?(?:text|words|content|everything|lines|messages|instructions|sentences|tokens)(?: [^ ]+){0,2} (?:above|before this|preceding|prior to|before the|you were given) ",
        false,
    ),
    rule(
        "dump_context",
        PromptExfiltration,
        0.8,
        " (?:repeat|print|output|dump|show|reveal|list|copy|recite|return|echo|write out)(?: me| us)?(?: back)? (?:everything|all|all the text|the text|the content|the contents|whatever is|what is|whats) (?:in|inside|from|of) (?:your|ur|the) (?:context|context window|memory|prompt|instructions|system prompt|conversation history|chat history|initial message|hidden prompt) ",
        true,
    ),
    rule(
        "start_of_conversation",
        PromptExfiltration,
        0.5,
        " (?:at|from|on) the (?:very )?(?:top|start|beginning) of (?:this|the|our|your) (?:conversation|chat|context|context window|prompt|session) | before (?:my|the|our) (?:very )?first (?:message|prompt|question) ",
        false,
    ),
    rule(
        "starting_with_you_are",
        PromptExfiltration,
        0.6,
        " (?:starting|beginning|that starts|that begins) with (?:you are|the words you are) ",
        false,
    ),
    // --- role / delimiter injection written as words ---
    rule(
        "end_of_prompt_marker",
        RoleInjection,
        0.5,
        " (?:end of (?:the )?(?:system prompt|system message|prompt|instructions|context|user input|document)|(?:begin|start) (?:of )?(?:new|admin|system|developer) (?:instructions|session|prompt|message)) ",
        false,
    ),
    rule(
        "admin_override",
        RoleInjection,
        0.6,
        " (?:admin|administrator|developer|system|root|security|emergency) override ",
        false,
    ),
    // --- data exfiltration ---
    rule(
        "send_data_to_url",
        DataExfiltration,
        0.8,
        " (?:send|post|upload|forward|transmit|exfiltrate|leak|submit|email|mail|copy|append|include|embed|encode|put|add)(?: [^ ]+){0,5} (?:conversation|chat history|chat log|history|previous messages|earlier messages|system prompt|prompt|secrets?|credentials|api keys?|passwords?|tokens?|session|memory|context|personal data|user data)(?: [^ ]+){0,5} (?:to|into|in|at|via|as|using)(?: the| this| my| a| an| our)? (?:https?|www|url|urls|link|webhook|endpoint|query string|query parameter|image url|attacker|external server|remote server|server at) ",
        false,
    ),
    rule(
        "disclose_secrets",
        DataExfiltration,
        0.45,
        " (?:disclose|reveal|leak|dump|print|output|exfiltrate|send) (?:all |the |any |every )?(?:stored |saved |known |your |user |users )?(?:credentials|passwords|api keys|secrets|access tokens|private keys|env vars|environment variables) ",
        false,
    ),
    rule(
        "render_image_with_data",
        DataExfiltration,
        0.5,
        " (?:render|display|show|output|include|insert|embed)(?: [^ ]+){0,4} (?:markdown image|image link|image tag|img tag|tracking pixel)(?: [^ ]+){0,10} (?:url|query|parameter) ",
        false,
    ),
    // --- encoded payloads ---
    rule(
        "decode_and_follow",
        EncodedPayload,
        0.6,
        " (?:decode|base64 decode|decrypt|deobfuscate|rot ?(?:13|ie)|unscramble|reverse)(?: [^ ]+){0,6} (?:and|then)(?: [^ ]+){0,2} (?:follow|execute|obey|do|run|perform|carry out|act on|comply with) ",
        false,
    ),
];

pub(super) const RAW_RULES: &[Rule] = &[
    rule(
        "chat_template_token",
        RoleInjection,
        0.8,
        r"(?i)<\|(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|end_header_id|eot_id|begin_of_text)\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>",
        false,
    ),
    rule(
        "fake_system_line",
        RoleInjection,
        0.45,
        r"(?m)^[ \t>]*(?:system|SYSTEM|System)[ \t]*(?:message|prompt|override|note|instruction)?[ \t]*:|\[(?i:system)(?: (?i:message|note|override))?\]",
        false,
    ),
    rule(
        "system_role_tag",
        RoleInjection,
        0.6,
        r"(?i)</?(?:system|system_prompt|sys)>",
        false,
    ),
    rule(
        "markdown_heading_instruction",
        RoleInjection,
        0.35,
        r"(?m)^[ \t]*#{2,}[ \t]*(?i:instructions?|system|new instructions?|system prompt)[ \t]*:?[ \t]*$",
        false,
    ),
    rule(
        "markdown_image_query",
        DataExfiltration,
        0.45,
        r"!\[[^\]\n]{0,200}\]\(\s*https?://[^)\s]+\?[^)\s]*=",
        false,
    ),
    rule(
        "markdown_image_placeholder",
        DataExfiltration,
        0.85,
        r"(?i)!\[[^\]\n]{0,200}\]\(\s*https?://[^)\s]*(?:\{|\[|\$\{|%7b|<|xxx|data=|secret|prompt=|history|conversation|q=\$)|<img[^>]{0,200}src=.{0,3}https?://[^\s>]*\?[^\s>]*(?:\{|\[|\$|%7b|data=|secret|prompt=)",
        false,
    ),
];

/// A compiled group of rules; `None` if a pattern failed to compile (the
/// unit tests catch that; requests then skip the group).
pub(super) struct Compiled {
    pub(super) words: Option<BytesRegexSet>,
    /// Indices into `WORD_RULES` of the squashed patterns, in order.
    pub(super) squashed: Option<(BytesRegexSet, Vec<usize>)>,
    pub(super) raw: Option<RegexSet>,
    /// What says most texts need none of the above (see `precheck.rs`).
    pub(super) precheck: Option<Precheck>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("words", &self.words.is_some())
            .field("squashed", &self.squashed.is_some())
            .field("raw", &self.raw.is_some())
            .field("precheck", &self.precheck.is_some())
            .finish()
    }
}

/// A word rule as compiled: folded like the text, and with "any byte but
/// a space" as a byte class, so the automaton stays small (the words are
/// matched as bytes; literal letters, non-ASCII ones included, still match
/// whole characters).
fn word_pattern(pattern: &str) -> String {
    fold_pattern(pattern).replace("[^ ]", "(?-u:[^ ])")
}

/// A word pattern for text without spaces: word skips become bounded
/// wildcards, and the spaces go.
fn squash_pattern(pattern: &str) -> String {
    pattern
        .replace("(?-u:[^ ])+", "(?-u:[^ ]){1,20}")
        .replace(' ', "")
        .replace("(?-u:[^])", "(?-u:[^ ])")
}

/// Whether the raw text has any byte sequence a raw rule starts from
/// (`<`, `[`, `](`, `##`, "system"); most prompts have none, and then the
/// raw rules are skipped.
pub(super) fn raw_markers(text: &str) -> bool {
    let b = text.as_bytes();
    memchr::memchr2(b'<', b'[', b).is_some()
        || memchr::memmem::find(b, b"##").is_some()
        || memchr::memmem::find(b, b"ystem").is_some()
        || memchr::memmem::find(b, b"YSTEM").is_some()
}

pub(super) static COMPILED: LazyLock<Compiled> = LazyLock::new(|| {
    let words = BytesRegexSet::new(WORD_RULES.iter().map(|r| word_pattern(r.pattern))).ok();
    let squash_idx: Vec<usize> = (0..WORD_RULES.len())
        .filter(|&i| WORD_RULES[i].squash)
        .collect();
    let squashed = BytesRegexSet::new(
        squash_idx
            .iter()
            .map(|&i| squash_pattern(&word_pattern(WORD_RULES[i].pattern))),
    )
    .ok()
    .map(|set| (set, squash_idx));
    let raw = RegexSet::new(RAW_RULES.iter().map(|r| r.pattern)).ok();
    let precheck = Precheck::new(WORD_RULES.iter().map(|r| word_pattern(r.pattern)));
    Compiled {
        words,
        squashed,
        raw,
        precheck,
    }
});
