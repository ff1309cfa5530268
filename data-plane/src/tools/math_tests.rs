#![allow(clippy::unwrap_used)]

use super::*;

fn eval(expression: &str) -> f64 {
    match evaluate(expression) {
        Ok(value) => value,
        Err(e) => panic!("{expression}: {e}"),
    }
}

fn error(expression: &str) -> String {
    match evaluate(expression) {
        Ok(value) => panic!("{expression} = {value}, expected an error"),
        Err(e) => e.message,
    }
}

#[test]
fn precedence_and_associativity() {
    assert_eq!(eval("1 + 2 * 3"), 7.0);
    assert_eq!(eval("(1 + 2) * 3"), 9.0);
    assert_eq!(eval("10 - 4 - 3"), 3.0, "left associative");
    assert_eq!(eval("64 / 4 / 2"), 8.0, "left associative");
    assert_eq!(eval("2 ^ 3 ^ 2"), 512.0, "right associative");
    assert_eq!(eval("-2 ^ 2"), -4.0, "unary minus binds looser than ^");
    assert_eq!(eval("2 ^ -1"), 0.5);
    assert_eq!(eval("(-2) ^ 2"), 4.0);
    assert_eq!(eval("2 * -3"), -6.0);
    assert_eq!(eval("--3"), 3.0);
    assert_eq!(eval("+4"), 4.0);
    assert_eq!(eval("7 % 3 + 1"), 2.0);
    assert_eq!(eval("-7 % 3"), -1.0, "the sign of the dividend");
    assert_eq!(eval("1 + 2 * 3 ^ 2 / 6 - 1"), 3.0);
}

#[test]
fn numbers_constants_and_functions() {
    assert_eq!(eval("1.5e3"), 1500.0);
    assert_eq!(eval("2E-2"), 0.02);
    assert_eq!(eval(".5 + 0.25"), 0.75);
    assert_eq!(eval("sqrt(16) + abs(-2)"), 6.0);
    assert_eq!(eval("round(2.5)"), 3.0);
    assert_eq!(eval("round(1.23456, 2)"), 1.23);
    assert_eq!(eval("floor(-1.5) + ceil(1.2)"), 0.0);
    assert_eq!(eval("min(3, 1, 2) + max(3, 1, 2)"), 4.0);
    assert_eq!(eval("MAX(1, 2)"), 2.0, "names are case-insensitive");
    assert_eq!(eval("ln(e)"), 1.0);
    assert_eq!(eval("log10(1000)"), 3.0);
    assert_eq!(eval("exp(0)"), 1.0);
    assert!((eval("2 * pi") - std::f64::consts::TAU).abs() < 1e-12);
    assert_eq!(eval("sqrt((3^2) + 4^2)"), 5.0);
}

#[test]
fn errors_say_what_and_where() {
    assert_eq!(error("1 / 0"), "division by zero at position 2");
    assert_eq!(error("5 % (2 - 2)"), "remainder by zero at position 2");
    assert!(error("").contains("empty"));
    assert!(error("   ").contains("empty"));
    assert_eq!(
        error("(1 + 2"),
        "missing ')' to close the '(' at position 0"
    );
    assert!(error("max(1 2)").contains("found number 2"));
    assert!(error("1 + 2)").contains("unexpected ')'"));
    assert!(error("1 +").contains("unexpected end"));
    assert!(error("2 3").contains("unexpected number 3"));
    assert!(error("2(3)").contains("unexpected '('"));
    assert!(error("foo(1)").contains("unknown function 'foo'"));
    assert!(error("x + 1").contains("unknown name 'x'"));
    assert!(error("sqrt(-1)").contains("negative"));
    assert!(error("ln(0)").contains("not positive"));
    assert!(error("sqrt(1, 2)").contains("takes 1 argument"));
    assert!(error("min()").contains("at least 1"));
    assert!(error("round(1, 0.5)").contains("whole number"));
    assert!(error("10 ^ 400").contains("too large"));
    assert!(error("1.2.3").contains("invalid number"));
    assert!(error("1 & 2").contains("unexpected character '&'"));
    assert!(error("__import__('os')").contains("unexpected character '\\''"));
    assert!(error("exec(1)").contains("unknown function 'exec'"));
    assert!(error(&"(".repeat(100)).contains("nests deeper"));
    assert!(error(&"-".repeat(100)).contains("nests deeper"));
    assert!(error(&"1+".repeat(3000)).contains("longer than"));
}

#[test]
fn garbage_never_panics() {
    // A deterministic spray of short strings over the evaluator's alphabet
    // and some strangers: every one must return, Ok or Err.
    let alphabet: Vec<char> = "0123456789.eE+-*/%^(),  piqrtsmaxlnöπ\u{0}\"'"
        .chars()
        .collect();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        let mut text = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        if let Ok(value) = evaluate(&text) {
            assert!(value.is_finite(), "{text:?} = {value}");
        }
    }
}
