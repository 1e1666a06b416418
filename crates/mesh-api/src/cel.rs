//! A parser for the part of CEL (the Common Expression Language) that
//! Istio's Telemetry `accessLogging[].filter.expression` and Envoy's CEL
//! access log filter use: literals, attribute paths (`response.code`,
//! `request.headers['x-user']`), method and function calls
//! (`request.path.startsWith('/api')`, `size(x)`), `!` and unary `-`,
//! `* / %`, `+ -`, comparisons and `in`, `&&`, `||` and `?:`, with CEL's
//! precedence.
//!
//! Validation parses the expression so a typo is refused with its
//! position; the proxy evaluates the tree. Nesting is bounded, so a
//! hostile expression cannot overflow the stack. Comprehension macros
//! (`all`, `exists`, `map`, `filter`) and `has()` parse as ordinary
//! calls; what an evaluator does not support it refuses by name.

use std::fmt;

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 64;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer literal.
    Int(i64),
    /// An unsigned integer literal (`1u`).
    Uint(u64),
    /// A floating point literal.
    Double(f64),
    /// A string literal.
    Str(String),
    /// A bare name (`response`).
    Ident(String),
    /// `operand.field`.
    Member(Box<Expr>, String),
    /// `operand[index]`.
    Index(Box<Expr>, Box<Expr>),
    /// `name(args)` or `target.name(args)`.
    Call {
        /// The receiver of a method call.
        target: Option<Box<Expr>>,
        /// Function name.
        name: String,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// `[a, b]`.
    List(Vec<Expr>),
    /// `!x`, `-x`.
    Unary(UnaryOp, Box<Expr>),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `c ? a : b`.
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `!`
    Not,
    /// `-`
    Neg,
}

/// Infix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `in`
    In,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

/// Why an expression does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at character {offset}: {message}")]
pub struct ParseError {
    /// Byte offset into the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Double(f64),
    Str(String),
    Ident(String),
    In,
    Punct(&'static str),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}u"),
            Self::Double(d) => write!(f, "{d}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Ident(s) => f.write_str(s),
            Self::In => f.write_str("in"),
            Self::Punct(p) => write!(f, "`{p}`"),
        }
    }
}

/// Parses `src`.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
        end: src.len(),
    };
    let e = p.expr()?;
    if let Some((at, t)) = p.tokens.get(p.pos) {
        return Err(ParseError {
            offset: *at,
            message: format!("unexpected {t} after a complete expression"),
        });
    }
    Ok(e)
}

const PUNCTS: &[&str] = &[
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "?", ":", ".", ",",
    "(", ")", "[", "]", "{", "}",
];

fn lex(src: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut i = 0;
    let err = |offset: usize, message: &str| ParseError {
        offset,
        message: message.into(),
    };
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'\'' || c == b'"' {
            let (s, next) = lex_string(src, i)?;
            out.push((start, Token::Str(s)));
            i = next;
            continue;
        }
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                // `1.foo` is not a number followed by a member; CEL has no such thing either.
                i += 1;
            }
            let text = &src[start..i];
            let token = if let Some(u) = text.strip_suffix(['u', 'U']) {
                Token::Uint(
                    parse_uint(u).ok_or_else(|| err(start, "invalid unsigned integer literal"))?,
                )
            } else if text.contains(['.', 'e', 'E']) && !text.starts_with("0x") {
                Token::Double(
                    text.parse()
                        .map_err(|_| err(start, "invalid floating point literal"))?,
                )
            } else {
                let u = parse_uint(text).ok_or_else(|| err(start, "invalid integer literal"))?;
                Token::Int(i64::try_from(u).map_err(|_| err(start, "integer literal overflows"))?)
            };
            out.push((start, token));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let token = match &src[start..i] {
                "true" => Token::Bool(true),
                "false" => Token::Bool(false),
                "null" => Token::Null,
                "in" => Token::In,
                id => Token::Ident(id.to_string()),
            };
            out.push((start, token));
            continue;
        }
        let Some(p) = PUNCTS.iter().find(|p| src[i..].starts_with(**p)) else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(err(start, &format!("unexpected character {ch:?}")));
        };
        out.push((start, Token::Punct(p)));
        i += p.len();
    }
    Ok(out)
}

fn parse_uint(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A quoted string starting at `start`; its value and the offset after it.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = src[start..].chars().next().unwrap_or('\'');
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, start + 1 + i + 1)),
            '\\' => {
                let Some((_, e)) = chars.next() else { break };
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' | '\'' | '"' | '`' | '?' => e,
                    other => {
                        return Err(ParseError {
                            offset: start + 1 + i,
                            message: format!("unsupported escape sequence \\{other}"),
                        });
                    }
                });
            }
            '\n' => break,
            c => out.push(c),
        }
    }
    Err(ParseError {
        offset: start,
        message: "unterminated string literal".into(),
    })
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    depth: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Some(Token::Punct(q)) if *q == p) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), ParseError> {
        if self.eat(p) {
            return Ok(());
        }
        let found = self.peek().map_or_else(
            || "the end of the expression".to_string(),
            |t| t.to_string(),
        );
        Err(self.error(format!("expected `{p}`, found {found}")))
    }

    fn error(&self, message: String) -> ParseError {
        ParseError {
            offset: self.offset(),
            message,
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("expression nests deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let cond = self.or()?;
        let e = if self.eat("?") {
            let a = self.expr()?;
            self.expect(":")?;
            let b = self.expr()?;
            Expr::Cond(Box::new(cond), Box::new(a), Box::new(b))
        } else {
            cond
        };
        self.depth -= 1;
        Ok(e)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            l = Expr::Binary(BinaryOp::Or, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.relation()?;
        while self.eat("&&") {
            let r = self.relation()?;
            l = Expr::Binary(BinaryOp::And, Box::new(l), Box::new(r));
        }
        Ok(l)
    }

    fn relation(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.addition()?;
        loop {
            let op = match self.peek() {
                Some(Token::Punct("==")) => BinaryOp::Eq,
                Some(Token::Punct("!=")) => BinaryOp::Ne,
                Some(Token::Punct("<")) => BinaryOp::Lt,
                Some(Token::Punct("<=")) => BinaryOp::Le,
                Some(Token::Punct(">")) => BinaryOp::Gt,
                Some(Token::Punct(">=")) => BinaryOp::Ge,
                Some(Token::In) => BinaryOp::In,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.addition()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn addition(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.multiplication()?;
        loop {
            let op = match self.peek() {
                Some(Token::Punct("+")) => BinaryOp::Add,
                Some(Token::Punct("-")) => BinaryOp::Sub,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.multiplication()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn multiplication(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Punct("*")) => BinaryOp::Mul,
                Some(Token::Punct("/")) => BinaryOp::Div,
                Some(Token::Punct("%")) => BinaryOp::Rem,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.unary()?;
            l = Expr::Binary(op, Box::new(l), Box::new(r));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let op = if self.eat("!") {
            UnaryOp::Not
        } else if self.eat("-") {
            UnaryOp::Neg
        } else {
            return self.member();
        };
        self.enter()?;
        let operand = self.unary()?;
        self.depth -= 1;
        Ok(match (op, operand) {
            (UnaryOp::Neg, Expr::Int(i)) => Expr::Int(-i),
            (UnaryOp::Neg, Expr::Double(d)) => Expr::Double(-d),
            (op, e) => Expr::Unary(op, Box::new(e)),
        })
    }

    fn member(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Token::Ident(name)) = self.peek().cloned() else {
                    return Err(self.error("expected a field or method name after `.`".into()));
                };
                self.pos += 1;
                if self.eat("(") {
                    let args = self.args(")")?;
                    e = Expr::Call {
                        target: Some(Box::new(e)),
                        name,
                        args,
                    };
                } else {
                    e = Expr::Member(Box::new(e), name);
                }
            } else if self.eat("[") {
                let index = self.expr()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn args(&mut self, close: &str) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if self.eat(close) {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let Some(t) = self.peek().cloned() else {
            return Err(self.error("expected an operand, found the end of the expression".into()));
        };
        self.pos += 1;
        Ok(match t {
            Token::Null => Expr::Null,
            Token::Bool(b) => Expr::Bool(b),
            Token::Int(i) => Expr::Int(i),
            Token::Uint(u) => Expr::Uint(u),
            Token::Double(d) => Expr::Double(d),
            Token::Str(s) => Expr::Str(s),
            Token::Ident(name) => {
                if self.eat("(") {
                    let args = self.args(")")?;
                    Expr::Call {
                        target: None,
                        name,
                        args,
                    }
                } else {
                    Expr::Ident(name)
                }
            }
            Token::Punct("(") => {
                let e = self.expr()?;
                self.expect(")")?;
                e
            }
            Token::Punct("[") => {
                self.enter()?;
                let items = self.args("]")?;
                self.depth -= 1;
                Expr::List(items)
            }
            other => {
                self.pos -= 1;
                return Err(self.error(format!("expected an operand, found {other}")));
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn path(parts: &[&str]) -> Expr {
        let mut e = Expr::Ident(parts[0].into());
        for p in &parts[1..] {
            e = Expr::Member(Box::new(e), (*p).into());
        }
        e
    }

    #[test]
    fn precedence_follows_cel() {
        let e =
            parse("response.code >= 500 || !connection.mtls && request.method == 'GET'").unwrap();
        let Expr::Binary(BinaryOp::Or, l, r) = e else {
            panic!("not an or");
        };
        assert_eq!(
            *l,
            Expr::Binary(
                BinaryOp::Ge,
                Box::new(path(&["response", "code"])),
                Box::new(Expr::Int(500))
            )
        );
        assert!(matches!(*r, Expr::Binary(BinaryOp::And, _, _)), "{r:?}");
    }

    #[test]
    fn methods_indexes_and_literals() {
        let e =
            parse(r#"request.headers["x-user"].startsWith('a\'b') && 3u in [1u, 3u] ? -1.5 : 2"#)
                .unwrap();
        let Expr::Cond(c, a, b) = e else {
            panic!("not a conditional: {e:?}");
        };
        assert_eq!(*a, Expr::Double(-1.5));
        assert_eq!(*b, Expr::Int(2));
        let Expr::Binary(BinaryOp::And, call, within) = *c else {
            panic!("not an and");
        };
        assert_eq!(
            *call,
            Expr::Call {
                target: Some(Box::new(Expr::Index(
                    Box::new(path(&["request", "headers"])),
                    Box::new(Expr::Str("x-user".into()))
                ))),
                name: "startsWith".into(),
                args: vec![Expr::Str("a'b".into())],
            }
        );
        assert!(matches!(*within, Expr::Binary(BinaryOp::In, _, _)));
    }

    #[test]
    fn errors_carry_the_position() {
        for (src, offset, words) in [
            ("response.code >=", 16, "expected an operand"),
            ("response.code == 'x", 17, "unterminated string"),
            ("(response.code", 14, "expected `)`"),
            ("response.code # 3", 14, "unexpected character"),
            ("a b", 2, "after a complete expression"),
            ("a.", 2, "field or method name"),
            ("99999999999999999999", 0, "invalid integer"),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.offset, offset, "{src}: {e}");
            assert!(e.message.contains(words), "{src}: {e}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let src = "(".repeat(10_000) + "1" + &")".repeat(10_000);
        assert!(parse(&src).unwrap_err().message.contains("nests deeper"));
        let bangs = "!".repeat(10_000) + "true";
        assert!(parse(&bangs).is_err());
    }
}
