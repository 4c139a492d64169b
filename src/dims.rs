//! Symbolic dimensions of shape-polymorphic exports: JAX's expressions, and solving them from
//! the concrete shapes of a request.
//!
//! `jax.export` writes a symbolic dimension as text: `b`, `2*b`, `b + 1`, `- b + 10`, `b*s`,
//! `b^2`, `floordiv(b, 2)`, `mod(b, 3)`, `max(b, s)`, `min(b, 4)`, `non_negative(b - 4)`.
//! [`DimExpr::parse`] reads that grammar; [`solve`] finds the dimension variables from the
//! shapes of the inputs the way JAX does (each variable from a dimension that is linear in it
//! and in no other unknown, then every dimension checked), so a request is refused with a
//! message naming the inputs that disagree before anything is refined or compiled.

use std::collections::BTreeMap;
use std::fmt;

/// A parsed symbolic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimExpr {
    /// An integer.
    Const(i64),
    /// A dimension variable (`b`).
    Var(String),
    /// A sum.
    Add(Vec<DimExpr>),
    /// A product.
    Mul(Vec<DimExpr>),
    /// `e^n`.
    Pow(Box<DimExpr>, u32),
    /// A named operation on two operands: `floordiv`, `mod`, `max`, `min`.
    Op(BinOp, Box<DimExpr>, Box<DimExpr>),
    /// `non_negative(e)`: `max(e, 0)`.
    NonNegative(Box<DimExpr>),
}

/// The two-operand operations JAX writes by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `floordiv(a, b)`.
    FloorDiv,
    /// `mod(a, b)` (Python's: the sign of the divisor).
    Mod,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
}

/// Values of dimension variables.
pub type Bindings = BTreeMap<String, i64>;

/// Longest dimension text accepted (JAX's are a few dozen characters).
const MAX_DIM_TEXT: usize = 512;
/// Deepest nesting of parentheses and operations accepted.
const MAX_DEPTH: usize = 32;

impl DimExpr {
    /// Parses JAX's text for a dimension.
    ///
    /// # Errors
    /// A message naming the position of the first token that does not fit.
    pub fn parse(text: &str) -> Result<DimExpr, String> {
        // The text comes from an untrusted artifact: bound it (and with it the recursion).
        if text.len() > MAX_DIM_TEXT {
            return Err(format!(
                "a dimension of {} characters (at most {MAX_DIM_TEXT})",
                text.len()
            ));
        }
        let tokens = tokenize(text)?;
        let mut p = Parser {
            t: &tokens,
            i: 0,
            depth: 0,
        };
        let e = p.expr()?;
        match p.t.get(p.i) {
            None => Ok(e),
            Some(t) => Err(format!("unexpected '{t}' in dimension '{text}'")),
        }
    }

    /// The value under `env`; `None` when a variable is unbound, on overflow, or on a division
    /// by zero.
    pub fn eval(&self, env: &Bindings) -> Option<i64> {
        Some(match self {
            DimExpr::Const(n) => *n,
            DimExpr::Var(v) => *env.get(v)?,
            DimExpr::Add(es) => es
                .iter()
                .try_fold(0i64, |a, e| a.checked_add(e.eval(env)?))?,
            DimExpr::Mul(es) => es
                .iter()
                .try_fold(1i64, |a, e| a.checked_mul(e.eval(env)?))?,
            DimExpr::Pow(e, n) => e.eval(env)?.checked_pow(*n)?,
            DimExpr::Op(op, a, b) => {
                let (a, b) = (a.eval(env)?, b.eval(env)?);
                match op {
                    BinOp::FloorDiv => a.checked_div_euclid(b).map(|q| {
                        // Python's floor division, also for a negative divisor.
                        if b < 0 && a.rem_euclid(b) != 0 {
                            q.saturating_add(1)
                        } else {
                            q
                        }
                    })?,
                    BinOp::Mod => {
                        let r = a.checked_rem(b)?;
                        if r != 0 && ((r < 0) != (b < 0)) {
                            r.checked_add(b)?
                        } else {
                            r
                        }
                    }
                    BinOp::Max => a.max(b),
                    BinOp::Min => a.min(b),
                }
            }
            DimExpr::NonNegative(e) => e.eval(env)?.max(0),
        })
    }

    /// The variables, in order of first appearance.
    pub fn vars(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_vars(&mut out);
        out
    }

    fn collect_vars(&self, out: &mut Vec<String>) {
        match self {
            DimExpr::Const(_) => {}
            DimExpr::Var(v) => {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            DimExpr::Add(es) | DimExpr::Mul(es) => es.iter().for_each(|e| e.collect_vars(out)),
            DimExpr::Pow(e, _) | DimExpr::NonNegative(e) => e.collect_vars(out),
            DimExpr::Op(_, a, b) => {
                a.collect_vars(out);
                b.collect_vars(out);
            }
        }
    }

    /// True if `v` appears only in sums and in products with constants (JAX solves only such
    /// uni-variate linear dimensions).
    fn linear_in(&self, v: &str) -> bool {
        match self {
            DimExpr::Const(_) | DimExpr::Var(_) => true,
            DimExpr::Add(es) => es.iter().all(|e| e.linear_in(v)),
            DimExpr::Mul(es) => {
                es.iter()
                    .filter(|e| e.vars().iter().any(|x| x == v))
                    .count()
                    <= 1
                    && es.iter().all(|e| e.linear_in(v))
            }
            DimExpr::Pow(..) | DimExpr::Op(..) | DimExpr::NonNegative(_) => {
                !self.vars().iter().any(|x| x == v)
            }
        }
    }
}

impl fmt::Display for DimExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, es: &[DimExpr], sep: &str| -> fmt::Result {
            for (i, e) in es.iter().enumerate() {
                if i > 0 {
                    f.write_str(sep)?;
                }
                match e {
                    DimExpr::Add(_) if sep == "*" => write!(f, "({e})")?,
                    _ => write!(f, "{e}")?,
                }
            }
            Ok(())
        };
        match self {
            DimExpr::Const(n) => write!(f, "{n}"),
            DimExpr::Var(v) => f.write_str(v),
            DimExpr::Add(es) => join(f, es, " + "),
            DimExpr::Mul(es) => join(f, es, "*"),
            DimExpr::Pow(e, n) => write!(f, "{e}^{n}"),
            DimExpr::Op(op, a, b) => {
                let name = match op {
                    BinOp::FloorDiv => "floordiv",
                    BinOp::Mod => "mod",
                    BinOp::Max => "max",
                    BinOp::Min => "min",
                };
                write!(f, "{name}({a}, {b})")
            }
            DimExpr::NonNegative(e) => write!(f, "non_negative({e})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Sym(char),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(n) => write!(f, "{n}"),
            Tok::Ident(s) => f.write_str(s),
            Tok::Sym(c) => write!(f, "{c}"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c.is_whitespace() {
            continue;
        }
        if c.is_ascii_digit() {
            let mut s = c.to_string();
            while let Some(&(_, d)) = chars.peek().filter(|(_, d)| d.is_ascii_digit()) {
                s.push(d);
                chars.next();
            }
            let n = s
                .parse()
                .map_err(|_| format!("number {s} too large in dimension '{text}'"))?;
            out.push(Tok::Int(n));
        } else if c.is_alphabetic() || c == '_' {
            let mut s = c.to_string();
            while let Some(&(_, d)) = chars
                .peek()
                .filter(|(_, d)| d.is_alphanumeric() || *d == '_')
            {
                s.push(d);
                chars.next();
            }
            out.push(Tok::Ident(s));
        } else if "+-*^(),".contains(c) {
            out.push(Tok::Sym(c));
        } else {
            return Err(format!(
                "unexpected character '{c}' at {at} in dimension '{text}'"
            ));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.i = self.i.saturating_add(1);
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(match self.peek() {
                Some(t) => format!("expected '{c}', found '{t}'"),
                None => format!("expected '{c}' at the end"),
            })
        }
    }

    fn expr(&mut self) -> Result<DimExpr, String> {
        self.depth = self.depth.saturating_add(1);
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let e = self.sum();
        self.depth = self.depth.saturating_sub(1);
        e
    }

    fn sum(&mut self) -> Result<DimExpr, String> {
        let mut terms = Vec::new();
        let mut neg = self.eat('-');
        loop {
            let t = self.term()?;
            terms.push(if neg {
                DimExpr::Mul(vec![DimExpr::Const(-1), t])
            } else {
                t
            });
            if self.eat('+') {
                neg = false;
            } else if self.eat('-') {
                neg = true;
            } else {
                break;
            }
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            DimExpr::Add(terms)
        })
    }

    fn term(&mut self) -> Result<DimExpr, String> {
        let mut factors = vec![self.factor()?];
        while self.eat('*') {
            factors.push(self.factor()?);
        }
        Ok(if factors.len() == 1 {
            factors.remove(0)
        } else {
            DimExpr::Mul(factors)
        })
    }

    fn factor(&mut self) -> Result<DimExpr, String> {
        let a = self.atom()?;
        if self.eat('^') {
            match self.peek().cloned() {
                Some(Tok::Int(n)) => {
                    self.i = self.i.saturating_add(1);
                    let n = u32::try_from(n).map_err(|_| format!("exponent {n} too large"))?;
                    return Ok(DimExpr::Pow(Box::new(a), n));
                }
                _ => return Err("expected an integer exponent after '^'".into()),
            }
        }
        Ok(a)
    }

    fn atom(&mut self) -> Result<DimExpr, String> {
        let tok = self.peek().cloned();
        self.i = self.i.saturating_add(1);
        match tok {
            Some(Tok::Int(n)) => Ok(DimExpr::Const(n)),
            Some(Tok::Sym('(')) => {
                let e = self.expr()?;
                self.expect(')')?;
                Ok(e)
            }
            Some(Tok::Ident(name)) if self.eat('(') => {
                let a = self.expr()?;
                let op = match name.as_str() {
                    "non_negative" => {
                        self.expect(')')?;
                        return Ok(DimExpr::NonNegative(Box::new(a)));
                    }
                    "floordiv" => BinOp::FloorDiv,
                    "mod" => BinOp::Mod,
                    "max" => BinOp::Max,
                    "min" => BinOp::Min,
                    other => return Err(format!("unknown operation '{other}'")),
                };
                self.expect(',')?;
                let b = self.expr()?;
                self.expect(')')?;
                Ok(DimExpr::Op(op, Box::new(a), Box::new(b)))
            }
            Some(Tok::Ident(name)) => Ok(DimExpr::Var(name)),
            Some(t) => Err(format!("unexpected '{t}'")),
            None => Err("unexpected end".into()),
        }
    }
}

/// One symbolic dimension of a request: `input`'s dimension `axis` is `expr` and was given
/// as `value`.
#[derive(Clone, Debug)]
pub struct Equation<'a> {
    /// Input position.
    pub input: usize,
    /// Axis within the input's shape.
    pub axis: usize,
    /// The parsed dimension.
    pub expr: &'a DimExpr,
    /// The size the request has there.
    pub value: u64,
}

/// Why the dimension variables of a request have no consistent values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SolveError {
    /// A plain variable given two values: (variable, input, axis, value) of the first
    /// occurrence, then (input, axis, value) of the conflicting one.
    Conflict {
        /// The variable.
        var: String,
        /// Where it was first determined: input position, axis, value.
        first: (usize, usize, i64),
        /// Where it disagrees: input position, axis, value.
        other: (usize, usize, u64),
    },
    /// A dimension whose expression does not evaluate to the given size.
    Mismatch {
        /// Input position and axis.
        at: (usize, usize),
        /// The expression.
        expr: String,
        /// Its value under the solution.
        expected: i64,
        /// The given size.
        got: u64,
        /// The variables it uses, with their values and where each was determined.
        from: Vec<(String, i64, usize, usize)>,
    },
    /// A variable that no input dimension determines on its own.
    Unsolvable {
        /// The variables left.
        vars: Vec<String>,
    },
    /// A variable below 1 (JAX requires every dimension variable to be at least 1).
    NotPositive {
        /// The variable.
        var: String,
        /// Its value.
        value: i64,
        /// Where it was determined: input position and axis.
        at: (usize, usize),
    },
}

/// Solves the dimension variables of `equations` as JAX does: repeatedly, a dimension that is
/// linear in exactly one unknown variable (and nothing else unknown) determines it; then every
/// dimension must evaluate to its size, and every variable must be at least 1.
///
/// # Errors
/// [`SolveError`] naming the first disagreement.
pub fn solve(equations: &[Equation<'_>]) -> Result<Bindings, SolveError> {
    let mut env = Bindings::new();
    let mut source: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    loop {
        let mut progress = false;
        for eq in equations {
            let unknown: Vec<String> = eq
                .expr
                .vars()
                .into_iter()
                .filter(|v| !env.contains_key(v))
                .collect();
            let [v] = unknown.as_slice() else { continue };
            if !eq.expr.linear_in(v) {
                continue;
            }
            let at = |x: i64| {
                let mut e = env.clone();
                e.insert(v.clone(), x);
                eq.expr.eval(&e)
            };
            let (Some(f0), Some(f1)) = (at(0), at(1)) else {
                continue;
            };
            let k = f1.saturating_sub(f0);
            let Ok(value) = i64::try_from(eq.value) else {
                continue;
            };
            let rest = value.saturating_sub(f0);
            if k == 0 || rest % k != 0 {
                continue; // left for the check below to report
            }
            env.insert(v.clone(), rest / k);
            source.insert(v.clone(), (eq.input, eq.axis));
            progress = true;
        }
        if !progress {
            break;
        }
    }
    for (v, &value) in &env {
        if value < 1 {
            let at = source.get(v).copied().unwrap_or_default();
            return Err(SolveError::NotPositive {
                var: v.clone(),
                value,
                at,
            });
        }
    }
    let mut left: Vec<String> = Vec::new();
    for eq in equations {
        for v in eq.expr.vars() {
            if !env.contains_key(&v) && !left.contains(&v) {
                left.push(v);
            }
        }
    }
    if !left.is_empty() {
        return Err(SolveError::Unsolvable { vars: left });
    }
    for eq in equations {
        let expected = eq.expr.eval(&env).unwrap_or(-1);
        if i64::try_from(eq.value).ok() == Some(expected) {
            continue;
        }
        if let DimExpr::Var(v) = eq.expr {
            let (input, axis) = source.get(v).copied().unwrap_or_default();
            return Err(SolveError::Conflict {
                var: v.clone(),
                first: (input, axis, expected),
                other: (eq.input, eq.axis, eq.value),
            });
        }
        let from = eq
            .expr
            .vars()
            .into_iter()
            .map(|v| {
                let (i, a) = source.get(&v).copied().unwrap_or_default();
                let value = env.get(&v).copied().unwrap_or_default();
                (v, value, i, a)
            })
            .collect();
        return Err(SolveError::Mismatch {
            at: (eq.input, eq.axis),
            expr: eq.expr.to_string(),
            expected,
            got: eq.value,
            from,
        });
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, i64)]) -> Bindings {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_and_evaluates_what_jax_writes() {
        let e = env(&[("b", 7), ("s", 3)]);
        for (text, want) in [
            ("b", 7),
            ("2*b", 14),
            ("b + 1", 8),
            ("b - 1", 6),
            ("- b + 10", 3),
            ("- 2*b + 100", 86),
            ("b*s", 21),
            ("3*b*s + 2", 65),
            ("b^2", 49),
            ("floordiv(b, 2)", 3),
            ("floordiv(b + 1, 2)", 4),
            ("floordiv(b*s, 4)", 5),
            ("mod(b, 3)", 1),
            ("max(b, s)", 7),
            ("min(b, 4)", 4),
            ("non_negative(s - 4)", 0),
        ] {
            let d = DimExpr::parse(text).unwrap_or_else(|m| panic!("{text}: {m}"));
            assert_eq!(d.eval(&e), Some(want), "{text}");
        }
        assert_eq!(
            DimExpr::parse("floordiv(-7, 2)").unwrap().eval(&e),
            Some(-4)
        );
        assert_eq!(DimExpr::parse("mod(-7, 3)").unwrap().eval(&e), Some(2));
        for bad in ["", "b +", "2**b", "b // 2", "foo(b, 2)", "(b", "b % 2"] {
            assert!(DimExpr::parse(bad).is_err(), "{bad}");
        }
        // Hostile texts are refused, not a stack overflow.
        let deep = format!("{}b{}", "(".repeat(300), ")".repeat(300));
        assert!(DimExpr::parse(&deep).unwrap_err().contains("characters"));
        let deep = format!("{}b{}", "(".repeat(40), ")".repeat(40));
        assert!(DimExpr::parse(&deep).unwrap_err().contains("nested"));
        let ok = format!("{}b{}", "(".repeat(20), ")".repeat(20));
        assert_eq!(DimExpr::parse(&ok).unwrap(), DimExpr::Var("b".into()));
        assert!(DimExpr::parse("99999999999999999999*b").is_err());
        assert_eq!(DimExpr::parse("b").unwrap().eval(&Bindings::new()), None);
    }

    fn eqs<'a>(dims: &'a [(usize, usize, DimExpr, u64)]) -> Vec<Equation<'a>> {
        dims.iter()
            .map(|(i, a, e, v)| Equation {
                input: *i,
                axis: *a,
                expr: e,
                value: *v,
            })
            .collect()
    }

    fn p(s: &str) -> DimExpr {
        DimExpr::parse(s).unwrap()
    }

    #[test]
    fn solves_linear_dimensions_and_reports_disagreements() {
        let d = [
            (0, 0, p("b"), 3),
            (1, 0, p("2*b"), 6),
            (2, 0, p("b + 1"), 4),
        ];
        assert_eq!(solve(&eqs(&d)), Ok(env(&[("b", 3)])));
        // Solved from 2*b alone.
        let d = [(0, 0, p("2*b"), 10), (0, 1, p("floordiv(b, 2)"), 2)];
        assert_eq!(solve(&eqs(&d)), Ok(env(&[("b", 5)])));
        let d = [(0, 0, p("b"), 5), (2, 1, p("b"), 3)];
        assert_eq!(
            solve(&eqs(&d)),
            Err(SolveError::Conflict {
                var: "b".into(),
                first: (0, 0, 5),
                other: (2, 1, 3)
            })
        );
        let d = [(0, 0, p("b"), 3), (1, 0, p("2*b"), 7)];
        assert!(matches!(
            solve(&eqs(&d)),
            Err(SolveError::Mismatch {
                expected: 6,
                got: 7,
                ..
            })
        ));
        let d = [(0, 0, p("b*s"), 6)];
        assert_eq!(
            solve(&eqs(&d)),
            Err(SolveError::Unsolvable {
                vars: vec!["b".into(), "s".into()]
            })
        );
        let d = [(0, 0, p("b"), 0)];
        assert!(matches!(
            solve(&eqs(&d)),
            Err(SolveError::NotPositive { .. })
        ));
        // An odd size for 2*b: no solution from it; reported against the expression.
        let d = [(0, 0, p("2*b"), 7)];
        assert!(matches!(
            solve(&eqs(&d)),
            Err(SolveError::Unsolvable { .. })
        ));
    }
}
