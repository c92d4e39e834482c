//! `calculator`: evaluates arithmetic expressions safely — a parser over numbers, operators,
//! parentheses, named constants and a fixed set of functions; nothing is ever executed.

/// Longest expression accepted.
pub const MAX_LEN: usize = 2000;
/// Deepest nesting of parentheses, function calls and unary signs.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
}

type R = Result<f64, String>;

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            Err(format!("expression nests deeper than {MAX_DEPTH} levels"))
        } else {
            Ok(())
        }
    }

    fn expr(&mut self) -> R {
        let mut v = self.term()?;
        loop {
            if self.eat(b'+') {
                v += self.term()?;
            } else if self.eat(b'-') {
                v -= self.term()?;
            } else {
                return Ok(v);
            }
        }
    }

    fn term(&mut self) -> R {
        let mut v = self.unary()?;
        loop {
            if self.eat(b'*') {
                v *= self.unary()?;
            } else if self.eat(b'/') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("division by zero".into());
                }
                v /= d;
            } else if self.eat(b'%') {
                let d = self.unary()?;
                if d == 0.0 {
                    return Err("modulo by zero".into());
                }
                v %= d;
            } else {
                return Ok(v);
            }
        }
    }

    /// `^` binds tighter than a sign and to the right: `-2^2` is `-4`, `2^3^2` is `2^9`.
    fn power(&mut self) -> R {
        let base = self.primary()?;
        if self.eat(b'^') {
            self.deeper()?;
            let exp = self.unary()?;
            self.depth -= 1;
            Ok(base.powf(exp))
        } else {
            Ok(base)
        }
    }

    fn unary(&mut self) -> R {
        if self.eat(b'-') {
            self.deeper()?;
            let v = -self.unary()?;
            self.depth -= 1;
            Ok(v)
        } else if self.eat(b'+') {
            self.deeper()?;
            let v = self.unary()?;
            self.depth -= 1;
            Ok(v)
        } else {
            self.power()
        }
    }

    fn primary(&mut self) -> R {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                self.deeper()?;
                let v = self.expr()?;
                self.depth -= 1;
                if !self.eat(b')') {
                    return Err(format!("expected `)` at position {}", self.i + 1));
                }
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            Some(c) => Err(format!(
                "unexpected `{}` at position {}",
                c as char,
                self.i + 1
            )),
            None => Err("unexpected end of expression".into()),
        }
    }

    fn number(&mut self) -> R {
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.') {
            self.i += 1;
        }
        if self.i < self.s.len() && (self.s[self.i] == b'e' || self.s[self.i] == b'E') {
            let save = self.i;
            self.i += 1;
            if self.i < self.s.len() && (self.s[self.i] == b'+' || self.s[self.i] == b'-') {
                self.i += 1;
            }
            if self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
            } else {
                self.i = save;
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        text.parse::<f64>()
            .map_err(|_| format!("`{text}` is not a number"))
    }

    fn name(&mut self) -> R {
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.i])
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !self.eat(b'(') {
            return match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                _ => Err(format!("unknown name `{name}`; constants are pi and e")),
            };
        }
        self.deeper()?;
        let mut args = Vec::new();
        if !self.eat(b')') {
            loop {
                args.push(self.expr()?);
                if self.eat(b')') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(format!("expected `,` or `)` in the arguments of {name}()"));
                }
            }
        }
        self.depth -= 1;
        call(&name, &args)
    }
}

fn call(name: &str, args: &[f64]) -> R {
    let one = |f: fn(f64) -> f64| match args {
        [x] => Ok(f(*x)),
        _ => Err(format!("{name}() takes 1 argument, got {}", args.len())),
    };
    match name {
        "sqrt" => match args {
            [x] if *x < 0.0 => Err("sqrt() of a negative number".into()),
            _ => one(f64::sqrt),
        },
        "abs" => one(f64::abs),
        "ln" => one(f64::ln),
        "log10" => one(f64::log10),
        "log2" => one(f64::log2),
        "log" => match args {
            [x] => Ok(x.log10()),
            [x, base] => Ok(x.log(*base)),
            _ => Err("log() takes 1 or 2 arguments".into()),
        },
        "exp" => one(f64::exp),
        "sin" => one(f64::sin),
        "cos" => one(f64::cos),
        "tan" => one(f64::tan),
        "asin" => one(f64::asin),
        "acos" => one(f64::acos),
        "atan" => one(f64::atan),
        "floor" => one(f64::floor),
        "ceil" => one(f64::ceil),
        "round" => match args {
            [x] => Ok(x.round()),
            [x, digits] if (0.0..=15.0).contains(digits) => {
                let f = 10f64.powi(*digits as i32);
                Ok((x * f).round() / f)
            }
            _ => Err("round() takes a number and optionally 0-15 digits".into()),
        },
        "pow" => match args {
            [x, y] => Ok(x.powf(*y)),
            _ => Err("pow() takes 2 arguments".into()),
        },
        "min" | "max" if args.is_empty() => Err(format!("{name}() needs at least 1 argument")),
        "min" => Ok(args.iter().copied().fold(f64::INFINITY, f64::min)),
        "max" => Ok(args.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
        _ => Err(format!(
            "unknown function `{name}`; functions are sqrt, abs, ln, log, log2, log10, exp, sin, cos, tan, asin, acos, atan, floor, ceil, round, pow, min, max"
        )),
    }
}

/// Evaluates `expression`; the result is finite or an error says why not.
pub fn evaluate(expression: &str) -> Result<f64, String> {
    if expression.len() > MAX_LEN {
        return Err(format!("expression is longer than {MAX_LEN} characters"));
    }
    let mut p = Parser {
        s: expression.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.expr()?;
    if p.peek().is_some() {
        return Err(format!(
            "unexpected `{}` at position {}",
            p.s[p.i] as char,
            p.i + 1
        ));
    }
    if !v.is_finite() {
        return Err("the result is not a finite number".into());
    }
    Ok(v)
}

/// A result as a person writes it: `4`, not `4.0`.
pub fn format(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn arithmetic() {
        for (e, v) in [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("2^3^2", 512.0),
            ("-2^2", -4.0),
            ("2^-1", 0.5),
            ("(-2)^2", 4.0),
            ("10 % 4", 2.0),
            ("15000 * 0.03", 450.0),
            ("sqrt(16) + abs(-2)", 6.0),
            ("max(1, 5, 3) - min(4, 2)", 3.0),
            ("round(2.345, 2)", 2.35),
            ("log(100)", 2.0),
            ("log(8, 2)", 3.0),
            ("1.5e3", 1500.0),
            ("2 * pi", 2.0 * std::f64::consts::PI),
        ] {
            let got = evaluate(e).unwrap();
            assert!((got - v).abs() < 1e-9, "{e} = {got}, expected {v}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (e, msg) in [
            ("1 / 0", "division by zero"),
            ("2 +", "unexpected end"),
            ("foo(1)", "unknown function `foo`"),
            ("x + 1", "unknown name `x`"),
            ("(1 + 2", "expected `)`"),
            ("1 2", "unexpected `2`"),
            ("10^400", "not a finite number"),
            ("sqrt(-1)", "negative"),
            ("__import__('os')", "unexpected `_`"),
        ] {
            let err = evaluate(e).unwrap_err();
            assert!(err.contains(msg), "{e}: {err}");
        }
        assert!(evaluate(&"(".repeat(100)).unwrap_err().contains("deeper"));
        assert!(evaluate(&"1+".repeat(2000)).unwrap_err().contains("longer"));
    }

    #[test]
    fn formatting() {
        assert_eq!(format(4.0), "4");
        assert_eq!(format(0.25), "0.25");
    }

    proptest! {
        #[test]
        fn never_panics(s in "[0-9a-z+*/%^().,\\- ]{0,200}") {
            let _ = evaluate(&s);
        }

        #[test]
        fn integer_sums_are_exact(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000) {
            prop_assert_eq!(evaluate(&format!("{a} + {b}")).unwrap(), (a + b) as f64);
            prop_assert_eq!(evaluate(&format!("{a} - ({b})")).unwrap(), (a - b) as f64);
        }
    }
}
