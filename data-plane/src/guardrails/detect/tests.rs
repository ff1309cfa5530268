#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The kinds found in `text` (every kind enabled), with the matched text.
fn found(text: &str) -> Vec<(PiiKind, &str)> {
    detect(text, KindSet::ALL)
        .into_iter()
        .map(|f| (f.kind, &text[f.range()]))
        .collect()
}

fn only(text: &str, kind: PiiKind) -> Vec<&str> {
    detect(text, KindSet::EMPTY.with(kind))
        .into_iter()
        .map(|f| &text[f.range()])
        .collect()
}

#[test]
fn every_pattern_compiles() {
    assert!(compiled());
}

// === e-mail ===

#[test]
fn emails_are_found_with_their_exact_span() {
    assert_eq!(
        only("mail alice@example.com today", PiiKind::Email),
        ["alice@example.com"]
    );
    assert_eq!(
        only("<bob.smith+news@mail.example.co.uk>.", PiiKind::Email),
        ["bob.smith+news@mail.example.co.uk"]
    );
    assert_eq!(
        only("mailto:carol_99@example.org", PiiKind::Email),
        ["carol_99@example.org"]
    );
    assert_eq!(
        only("end.@x: .dave@example.net.", PiiKind::Email),
        ["dave@example.net"]
    );
}

#[test]
fn email_lookalikes_are_not_emails() {
    for text in [
        "npm i lodash@4.17.21",
        "user@localhost",
        "see icon@2x.png",
        "@everyone please read",
        "postgres://app:s3cr3tPa55@db.example.com/app",
        "a@b",
        "foo@-bar.com",
    ] {
        assert!(only(text, PiiKind::Email).is_empty(), "{text}");
    }
}

// === phone ===

#[test]
fn phone_numbers_in_common_formats_are_found() {
    for (text, want) in [
        ("call (555) 123-4567 now", "(555) 123-4567"),
        ("call 555-123-4567.", "555-123-4567"),
        ("call 555.010.0199", "555.010.0199"),
        ("call 1-555-010-0199", "1-555-010-0199"),
        ("office +44 20 7946 0958", "+44 20 7946 0958"),
        ("+1 (555) 010-0123 ext", "+1 (555) 010-0123"),
        ("tel:+15550100199", "+15550100199"),
        ("Paris +33 1 23 45 67 89", "+33 1 23 45 67 89"),
        ("London 020 7946 0958", "020 7946 0958"),
        ("mobile 07700 900123", "07700 900123"),
    ] {
        assert_eq!(only(text, PiiKind::Phone), [want], "{text}");
    }
}

#[test]
fn dates_versions_ids_and_plain_numbers_are_not_phones() {
    for text in [
        "on 2024-01-15 at 10:30",
        "released 12/05/2023",
        "version 10.4.1234",
        "order ORD-555-123-4567",
        "id 555-123-4567-89",
        "15551234567 rows",
        "values 250 300 4000",
        "ticket #12345678",
        "1+2=3",
        "isbn 978-0-306-40615-7",
        "between 123-456-7890",
    ] {
        assert!(only(text, PiiKind::Phone).is_empty(), "{text}");
    }
}

// === card numbers ===

#[test]
fn luhn_valid_cards_with_plausible_issuers_are_found() {
    for (text, want) in [
        ("card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("card 5555555555554444", "5555555555554444"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("disc 6011111111111117", "6011111111111117"),
        ("mc2 2223003122003222", "2223003122003222"),
        ("diners 30569309025904", "30569309025904"),
        ("card 4111 1111 1111 1111 12/27", "4111 1111 1111 1111"),
    ] {
        assert_eq!(only(text, PiiKind::CardNumber), [want], "{text}");
    }
}

#[test]
fn card_lookalikes_are_not_cards() {
    for text in [
        "card 4111 1111 1111 1112",     // Luhn fails
        "id 1234567812345670",          // Luhn ok, no issuer starts with 1
        "ts 1700000000000",             // a timestamp
        "route 4111 11 1111 1111 1111", // bad grouping
        "x4111111111111111",            // glued to a letter
        "9999 9999 9999 9995",          // no issuer starts with 9
    ] {
        assert!(only(text, PiiKind::CardNumber).is_empty(), "{text}");
    }
}

#[test]
fn luhn_matches_the_reference_values() {
    let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
    assert!(numeric::luhn(&digits("79927398713")));
    assert!(!numeric::luhn(&digits("79927398710")));
    assert!(numeric::luhn(&digits("4111111111111111")));
}

// === SSN ===

#[test]
fn ssns_outside_the_unassigned_ranges_are_found() {
    assert_eq!(only("ssn 078-05-1120.", PiiKind::Ssn), ["078-05-1120"]);
    assert_eq!(only("ssn 123 45 6789", PiiKind::Ssn), ["123 45 6789"]);
    assert_eq!(only("SSN: 123456789", PiiKind::Ssn), ["123456789"]);
    for text in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123-45 6789",
        "id 123456789",
        "1-123-45-6789",
    ] {
        assert!(only(text, PiiKind::Ssn).is_empty(), "{text}");
    }
}

// === IP ===

#[test]
fn ipv4_addresses_with_valid_octets_are_found() {
    assert_eq!(
        only("from 192.168.1.10:8080", PiiKind::IpAddress),
        ["192.168.1.10"]
    );
    assert_eq!(only("net 10.0.0.0/8.", PiiKind::IpAddress), ["10.0.0.0"]);
    for text in [
        "256.1.1.1",
        "1.2.3.4.5",
        "01.02.03.04",
        "version 1.2.3.4",
        "v1.2.3.4",
        "1.2.3",
    ] {
        assert!(only(text, PiiKind::IpAddress).is_empty(), "{text}");
    }
}

#[test]
fn ipv6_addresses_are_found_and_paths_and_times_are_not() {
    assert_eq!(
        only("host 2001:db8::1 is up", PiiKind::IpAddress),
        ["2001:db8::1"]
    );
    assert_eq!(only("bind [::1]:80", PiiKind::IpAddress), ["::1"]);
    assert_eq!(
        only("fe80::1ff:fe23:4567:890a%eth0.", PiiKind::IpAddress),
        ["fe80::1ff:fe23:4567:890a"]
    );
    assert_eq!(
        only(
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
            PiiKind::IpAddress
        ),
        ["2001:0db8:0000:0000:0000:ff00:0042:8329"]
    );
    for text in [
        "at 12:30:45",
        "mac 00:1a:2b:3c:4d:5e",
        "use std::io::Read;",
        "Foo :: Bar",
        "ratio 3:2",
        "a::b::c",
    ] {
        assert!(only(text, PiiKind::IpAddress).is_empty(), "{text}");
    }
}

// === secrets ===

#[test]
fn well_known_credential_formats_are_found() {
    let ghp = format!("ghp_{}", "a1B2".repeat(9));
    let pat = format!("github_pat_{}", "Ab3_".repeat(20));
    let slack = format!("xoxb-{}", "1234567890-Abc");
    let openai = format!("sk-proj-{}", "Zx9".repeat(10));
    let anthropic = format!("sk-ant-api03-{}", "Qw3-".repeat(10));
    let google = format!("AIza{}", "Sy0_".repeat(8) + "abc");
    let stripe = format!("sk_live_{}", "51Hx".repeat(6));
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    let aios = format!("aios_{}", "kQ9_".repeat(10) + "x-Z");
    let bearer = "Authorization: Bearer abc123DEF456ghi789JKL";
    let basic = "Authorization: Basic dXNlcjpodW50ZXIy";
    for token in [
        "AKIAIOSFODNN7EXAMPLE",
        &ghp,
        &pat,
        &slack,
        &openai,
        &anthropic,
        &google,
        &stripe,
        jwt,
        &aios,
    ] {
        let text = format!("key: {token} end");
        assert_eq!(only(&text, PiiKind::Secret), [token], "{text}");
    }
    assert_eq!(
        only(bearer, PiiKind::Secret),
        ["Bearer abc123DEF456ghi789JKL"]
    );
    assert_eq!(only(basic, PiiKind::Secret), ["Basic dXNlcjpodW50ZXIy"]);
}

#[test]
fn private_key_blocks_are_found_whole_also_json_escaped() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAfake+key/body==\nQUJDRA==\n-----END RSA PRIVATE KEY-----";
    let text = format!("here:\n{pem}\nthanks");
    assert_eq!(only(&text, PiiKind::Secret), [pem]);
    let json =
        r#"{"key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANfake\n-----END PRIVATE KEY-----\n"}"#;
    let got = only(json, PiiKind::Secret);
    assert_eq!(got.len(), 1);
    assert!(got[0].ends_with("-----END PRIVATE KEY-----"));
}

#[test]
fn credential_assignments_report_only_the_value() {
    for (text, want) in [
        ("password=hunter22", "hunter22"),
        ("DB_PASSWORD: 'S3cure!pass'", "S3cure!pass"),
        (
            r#"{"api_key": "a8f5f167f44f4964e6c998dee827110c"}"#,
            "a8f5f167f44f4964e6c998dee827110c",
        ),
        (
            "export CLIENT_SECRET=Zm9vYmFyYmF6cXV4MTIz",
            "Zm9vYmFyYmF6cXV4MTIz",
        ),
        (
            "https://api.example.com/v1?token=9f8e7d6c5b4a39281706&x=1",
            "9f8e7d6c5b4a39281706",
        ),
        ("postgres://app:s3cr3tPa55@db.example.com/app", "s3cr3tPa55"),
    ] {
        assert_eq!(only(text, PiiKind::Secret), [want], "{text}");
    }
}

#[test]
fn credential_words_without_a_value_are_not_secrets() {
    for text in [
        "password = getpass.getpass()",
        "password: ${DB_PASSWORD}",
        "api_key: <your-api-key>",
        "Your password: must be 12 characters",
        "password=changeme",
        "max_tokens: 4096",
        "bypass=truetruetrue1",
        "the secret: tell no one",
        "if password == stored_hash:",
        "password: ********",
        "sk-learn-is-a-python-library",
        "task-list-for-the-week-ahead",
        "Bearer tokens are described in RFC 6750",
        "basic understanding of chemistry",
    ] {
        assert!(only(text, PiiKind::Secret).is_empty(), "{text}");
    }
}

// === combined ===

#[test]
fn overlapping_findings_keep_the_stricter_kind() {
    // A token whose body contains a phone-like run stays one secret.
    let text = "token sk-proj-555-123-4567-abcdefghijklmnop";
    assert_eq!(
        found(text),
        [(PiiKind::Secret, "sk-proj-555-123-4567-abcdefghijklmnop")]
    );
    // The password of a URL is a secret, and the address is not an e-mail.
    let text = "mysql://root:Pa55word99@db.example.com";
    assert_eq!(found(text), [(PiiKind::Secret, "Pa55word99")]);
}

#[test]
fn kinds_not_asked_for_are_not_reported() {
    let text = "alice@example.com 555-123-4567 4111111111111111 078-05-1120 10.0.0.1";
    assert_eq!(found(text).len(), 5);
    let set = KindSet::of(&[PiiKind::Email, PiiKind::Ssn]);
    let kinds: Vec<PiiKind> = detect(text, set).iter().map(|f| f.kind).collect();
    assert_eq!(kinds, [PiiKind::Email, PiiKind::Ssn]);
    assert!(detect(text, KindSet::EMPTY).is_empty());
}

#[test]
fn redaction_replaces_each_span_with_its_label() {
    let text = "Mail alice@example.com or call 555-123-4567; card 4111 1111 1111 1111.";
    let findings = detect(text, KindSet::ALL);
    assert_eq!(
        redact(text, &findings),
        "Mail [REDACTED:EMAIL] or call [REDACTED:PHONE]; card [REDACTED:CARD_NUMBER]."
    );
    assert!(matches!(redact("nothing here", &[]), Cow::Borrowed(_)));
}

#[test]
fn non_ascii_text_keeps_char_boundaries() {
    let text = "Grüße an jürgen@example.de — Tel. +49 30 901820 — 東京 192.0.2.5 ✓";
    let got = found(text);
    assert_eq!(
        got,
        [
            (PiiKind::Phone, "+49 30 901820"),
            (PiiKind::IpAddress, "192.0.2.5")
        ]
    );
    let redacted = redact(text, &detect(text, KindSet::ALL));
    assert!(redacted.contains("東京 [REDACTED:IP_ADDRESS] ✓"));
}

#[test]
fn kind_sets_and_counts() {
    assert_eq!(KindSet::or_if_empty(&[], KindSet::ALL), KindSet::ALL);
    assert!(!KindSet::or_if_empty(&[], KindSet::PERSONAL).contains(PiiKind::Secret));
    let set = KindSet::of(&[PiiKind::Phone, PiiKind::Secret]);
    assert_eq!(
        set.iter().collect::<Vec<_>>(),
        [PiiKind::Phone, PiiKind::Secret]
    );
    assert!(!set.without(PiiKind::Phone).contains(PiiKind::Phone));
    let counts = KindCounts::of(&[
        Finding::new(PiiKind::Email, 0, 1),
        Finding::new(PiiKind::Email, 2, 3),
        Finding::new(PiiKind::Ssn, 4, 5),
    ]);
    assert_eq!(counts.to_string(), "EMAIL×2, SSN×1");
    assert_eq!(counts.total(), 3);
    assert_eq!(counts.kinds(), KindSet::of(&[PiiKind::Email, PiiKind::Ssn]));
}

/// Not a benchmark (that would be a bench program): prints ns per call
/// for a typical 1 KB and 2 KB prompt so a slowdown is visible in
/// `cargo test -- --nocapture`. Asserts nothing about time.
#[test]
fn rough_cost_per_call() {
    let para = "Please summarise the attached quarterly report for the board. Revenue grew 12% \
        to 4.2 million in Q3 2024, driven by the new pricing tiers launched on 2024-07-01; \
        churn fell from 3.1% to 2.4%. Contact the finance team if anything is unclear, and \
        keep the summary under 300 words with three bullet points for risks. ";
    for size in [1024usize, 2048] {
        let text: String = para.chars().cycle().take(size).collect();
        // Once first, so the patterns are compiled and the caches warm.
        std::hint::black_box(detect(&text, KindSet::ALL));
        let n = 2000u32;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(detect(std::hint::black_box(&text), KindSet::ALL));
        }
        let per = start.elapsed() / n;
        println!("detect(all kinds), {size} B prose: {per:?} per call");
    }
}

/// Long runs of the bytes each detector starts from finish (each byte is
/// looked at a bounded number of times); a quadratic scan would make this
/// test take minutes.
#[test]
fn adversarial_runs_take_linear_time() {
    for unit in [
        "a@", "a@b.", "1 ", "1-", "a:", "::", "x=", "://a:", "4111 ", "+1 ",
    ] {
        let text = unit.repeat(200_000 / unit.len());
        let _ = detect(&text, KindSet::ALL);
    }
}

#[test]
fn the_first_digit_is_found_in_any_block_and_at_either_end() {
    assert_eq!(numeric::first_digit(b""), None);
    assert_eq!(
        numeric::first_digit(b"no digits at all, over several blocks of text"),
        None
    );
    for at in 0..40 {
        let mut text = vec![b'x'; 40];
        text[at] = b'7';
        if at + 1 < 40 {
            text[at + 1] = b'1';
        }
        assert_eq!(numeric::first_digit(&text), Some(at), "digit at {at}");
    }
}
