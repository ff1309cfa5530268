//! A safe arithmetic evaluator for the `math.evaluate` built-in: numbers,
//! `+ - * / % ^`, parentheses, unary minus, the constants `pi` and `e`, and
//! a few functions. It parses and evaluates in one recursive-descent pass
//! over a token list; nothing is ever executed, and every failure (bad
//! syntax, division by zero, a non-finite result, nesting too deep for the
//! stack) is an [`EvalError`] naming the position, never a panic.
//!
//! Precedence, loosest first: `+ -`; `* / %`; unary `- +`; `^` (right
//! associative, so `2^3^2` is `2^9`, and `-2^2` is `-(2^2)` as in
//! mathematics). `%` is the remainder with the sign of the dividend.

use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Deepest nesting of parentheses, function calls and unary operators.
const MAX_DEPTH: usize = 64;

/// Why an expression could not be evaluated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// What went wrong, with the byte offset where it applies.
    pub message: String,
}

impl EvalError {
    fn at(position: usize, message: impl fmt::Display) -> Self {
        Self {
            message: format!("{message} at position {position}"),
        }
    }

    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// Evaluates `expression`.
pub fn evaluate(expression: &str) -> Result<f64, EvalError> {
    if expression.len() > MAX_EXPRESSION_LEN {
        return Err(EvalError::new(format!(
            "the expression is longer than {MAX_EXPRESSION_LEN} bytes"
        )));
    }
    let tokens = tokenize(expression)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        depth: 0,
        end: expression.len(),
    };
    if parser.tokens.is_empty() {
        return Err(EvalError::new("the expression is empty"));
    }
    let value = parser.expression()?;
    if let Some((position, token)) = parser.tokens.get(parser.next) {
        return Err(EvalError::at(*position, format!("unexpected {token}")));
    }
    finite(value, 0)
}

// === Tokens ===

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Op(char),
    Open,
    Close,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Number(n) => write!(f, "number {n}"),
            Token::Name(name) => write!(f, "name '{name}'"),
            Token::Op(op) => write!(f, "'{op}'"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, EvalError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        let token = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '0'..='9' | '.' => {
                let mut end = start;
                let mut exponent = false;
                while let Some(&(i, d)) = chars.peek() {
                    let sign_of_exponent =
                        exponent && matches!(d, '+' | '-') && text[..i].ends_with(['e', 'E']);
                    if d.is_ascii_digit() || d == '.' || sign_of_exponent {
                        end = i + d.len_utf8();
                        chars.next();
                    } else if matches!(d, 'e' | 'E') && !exponent {
                        // `2e3` is a number; `2e` followed by no digit is
                        // `2` then the constant `e`, which is an error later.
                        let rest = &text[i + 1..];
                        let digits = rest.trim_start_matches(['+', '-']);
                        if !digits.starts_with(|c: char| c.is_ascii_digit()) {
                            break;
                        }
                        exponent = true;
                        end = i + 1;
                        chars.next();
                    } else {
                        break;
                    }
                }
                let literal = &text[start..end];
                let value: f64 = literal
                    .parse()
                    .map_err(|_| EvalError::at(start, format!("invalid number '{literal}'")))?;
                Token::Number(value)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut name = String::new();
                while let Some(&(_, d)) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        name.push(d.to_ascii_lowercase());
                        chars.next();
                    } else {
                        break;
                    }
                }
                Token::Name(name)
            }
            '+' | '-' | '*' | '/' | '%' | '^' => {
                chars.next();
                Token::Op(c)
            }
            '(' => {
                chars.next();
                Token::Open
            }
            ')' => {
                chars.next();
                Token::Close
            }
            ',' => {
                chars.next();
                Token::Comma
            }
            other => {
                return Err(EvalError::at(
                    start,
                    format!("unexpected character {other:?}"),
                ));
            }
        };
        tokens.push((start, token));
    }
    Ok(tokens)
}

// === Parser ===

struct Parser {
    tokens: Vec<(usize, Token)>,
    next: usize,
    depth: usize,
    /// Length of the text, the position of "the end".
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next).map(|(_, t)| t)
    }

    fn position(&self) -> usize {
        self.tokens.get(self.next).map_or(self.end, |(p, _)| *p)
    }

    fn advance(&mut self) -> Option<(usize, Token)> {
        let token = self.tokens.get(self.next).cloned();
        self.next += 1;
        token
    }

    fn descend(&mut self) -> Result<(), EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EvalError::at(
                self.position(),
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    /// `term (('+' | '-') term)*`
    fn expression(&mut self) -> Result<f64, EvalError> {
        let mut value = self.term()?;
        while let Some(Token::Op(op @ ('+' | '-'))) = self.peek() {
            let (op, position) = (*op, self.position());
            self.next += 1;
            let right = self.term()?;
            value = finite(
                if op == '+' {
                    value + right
                } else {
                    value - right
                },
                position,
            )?;
        }
        Ok(value)
    }

    /// `unary (('*' | '/' | '%') unary)*`
    fn term(&mut self) -> Result<f64, EvalError> {
        let mut value = self.unary()?;
        while let Some(Token::Op(op @ ('*' | '/' | '%'))) = self.peek() {
            let (op, position) = (*op, self.position());
            self.next += 1;
            let right = self.unary()?;
            value = match op {
                '*' => value * right,
                _ if right == 0.0 => {
                    let what = if op == '/' { "division" } else { "remainder" };
                    return Err(EvalError::at(position, format!("{what} by zero")));
                }
                '/' => value / right,
                _ => value % right,
            };
            value = finite(value, position)?;
        }
        Ok(value)
    }

    /// `('-' | '+') unary | power`
    fn unary(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            Some(Token::Op(op @ ('-' | '+'))) => {
                let negate = *op == '-';
                self.next += 1;
                self.descend()?;
                let value = self.unary()?;
                self.depth -= 1;
                Ok(if negate { -value } else { value })
            }
            _ => self.power(),
        }
    }

    /// `primary ('^' unary)?`: right associative through `unary`.
    fn power(&mut self) -> Result<f64, EvalError> {
        let base = self.primary()?;
        if let Some(Token::Op('^')) = self.peek() {
            let position = self.position();
            self.next += 1;
            self.descend()?;
            let exponent = self.unary()?;
            self.depth -= 1;
            return finite(base.powf(exponent), position);
        }
        Ok(base)
    }

    /// A number, a constant, a function call or a parenthesised expression.
    fn primary(&mut self) -> Result<f64, EvalError> {
        let position = self.position();
        match self.advance() {
            Some((_, Token::Number(n))) => Ok(n),
            Some((_, Token::Open)) => {
                self.descend()?;
                let value = self.expression()?;
                self.depth -= 1;
                self.expect_close(position)?;
                Ok(value)
            }
            Some((_, Token::Name(name))) => {
                if self.peek() == Some(&Token::Open) {
                    self.next += 1;
                    self.descend()?;
                    let args = self.arguments(position)?;
                    self.depth -= 1;
                    call(&name, &args, position)
                } else {
                    constant(&name, position)
                }
            }
            Some((_, token)) => Err(EvalError::at(position, format!("unexpected {token}"))),
            None => Err(EvalError::at(position, "unexpected end of expression")),
        }
    }

    /// Comma-separated expressions up to the closing parenthesis.
    fn arguments(&mut self, open: usize) -> Result<Vec<f64>, EvalError> {
        let mut args = Vec::new();
        if self.peek() == Some(&Token::Close) {
            self.next += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expression()?);
            match self.peek() {
                Some(Token::Comma) => self.next += 1,
                _ => break,
            }
        }
        self.expect_close(open)?;
        Ok(args)
    }

    fn expect_close(&mut self, open: usize) -> Result<(), EvalError> {
        match self.advance() {
            Some((_, Token::Close)) => Ok(()),
            Some((position, token)) => Err(EvalError::new(format!(
                "expected ')' at position {position} to close the '(' at position {open}, found {token}"
            ))),
            None => Err(EvalError::new(format!(
                "missing ')' to close the '(' at position {open}"
            ))),
        }
    }
}

// === Constants and functions ===

/// Function names, for error messages.
const FUNCTIONS: &str = "sqrt, abs, round, floor, ceil, min, max, ln, log10, exp";

fn constant(name: &str, position: usize) -> Result<f64, EvalError> {
    match name {
        "pi" => Ok(std::f64::consts::PI),
        "e" => Ok(std::f64::consts::E),
        _ => Err(EvalError::at(
            position,
            format!("unknown name '{name}' (constants: pi, e; functions: {FUNCTIONS})"),
        )),
    }
}

fn call(name: &str, args: &[f64], position: usize) -> Result<f64, EvalError> {
    let arity = |min: usize, max: usize| -> Result<(), EvalError> {
        if args.len() < min || args.len() > max {
            let wanted = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} or {b}"),
            };
            return Err(EvalError::at(
                position,
                format!("{name}() takes {wanted} argument(s), got {}", args.len()),
            ));
        }
        Ok(())
    };
    let first = args.first().copied().unwrap_or_default();
    let value = match name {
        "sqrt" => {
            arity(1, 1)?;
            if first < 0.0 {
                return Err(EvalError::at(position, "sqrt() of a negative number"));
            }
            first.sqrt()
        }
        "abs" => {
            arity(1, 1)?;
            first.abs()
        }
        "round" => {
            arity(1, 2)?;
            match args.get(1) {
                None => first.round(),
                Some(&digits) => {
                    if digits.fract() != 0.0 || !(0.0..=15.0).contains(&digits) {
                        return Err(EvalError::at(
                            position,
                            "round()'s digits must be a whole number from 0 to 15",
                        ));
                    }
                    let scale = 10f64.powf(digits);
                    (first * scale).round() / scale
                }
            }
        }
        "floor" => {
            arity(1, 1)?;
            first.floor()
        }
        "ceil" => {
            arity(1, 1)?;
            first.ceil()
        }
        "min" => {
            arity(1, usize::MAX)?;
            args.iter().copied().fold(f64::INFINITY, f64::min)
        }
        "max" => {
            arity(1, usize::MAX)?;
            args.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }
        "ln" | "log10" => {
            arity(1, 1)?;
            if first <= 0.0 {
                return Err(EvalError::at(
                    position,
                    format!("{name}() of a number that is not positive"),
                ));
            }
            if name == "ln" {
                first.ln()
            } else {
                first.log10()
            }
        }
        "exp" => {
            arity(1, 1)?;
            first.exp()
        }
        _ => {
            return Err(EvalError::at(
                position,
                format!("unknown function '{name}' (functions: {FUNCTIONS})"),
            ));
        }
    };
    finite(value, position)
}

/// Infinities and NaN are errors: JSON cannot carry them, and they always
/// mean an overflow or an undefined operation.
fn finite(value: f64, position: usize) -> Result<f64, EvalError> {
    if value.is_finite() {
        Ok(value)
    } else if value.is_nan() {
        Err(EvalError::at(position, "the result is undefined"))
    } else {
        Err(EvalError::at(position, "the result is too large"))
    }
}

#[cfg(test)]
#[path = "math_tests.rs"]
mod tests;
