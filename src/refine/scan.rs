//! Scanning a refined module's text for what XLA cannot compile statically.

use super::RefineError;

/// Shape-dynamic StableHLO ops: `stablehlo-canonicalize-dynamism` rewrites each into its static
/// form once its shape operands are constants; one that is left has a data-dependent shape,
/// which XLA cannot translate (`... can't be translated to XLA HLO`).
const SHAPE_DYNAMIC_OPS: &[&str] = &[
    "stablehlo.dynamic_broadcast_in_dim",
    "stablehlo.dynamic_conv",
    "stablehlo.dynamic_gather",
    "stablehlo.dynamic_iota",
    "stablehlo.dynamic_pad",
    "stablehlo.dynamic_reshape",
    "stablehlo.real_dynamic_slice",
];

/// Longest line quoted in an error.
const MAX_LINE: usize = 300;

/// Whether a `stablehlo-check-shape-assertions` error is the pass refusing an assertion it
/// cannot evaluate (rather than a failed assertion): those messages are the pass's own.
pub(crate) fn is_malformed_assertion(message: &str) -> bool {
    let m = message.trim_start();
    m.starts_with("expects ") || m.ends_with(" is not a supported attribute")
}

/// Refuses a printed module that still has dynamic types, shape-dynamic ops, shape assertions,
/// or XLA-only dynamic custom calls (`@stablehlo.dynamic_top_k`, ...), naming the first one.
pub(crate) fn check_static(text: &str) -> Result<(), RefineError> {
    // Ops that opened a region, so that a line like `}) : (tensor<?x...>) -> ...` can be
    // attributed to its op.
    let mut open: Vec<Option<String>> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(target) = custom_call_target(line) {
            if target == "shape_assertion" {
                return Err(RefineError::Unsupported {
                    construct: "stablehlo.custom_call @shape_assertion".into(),
                    detail: format!(
                        "a shape assertion is left after stablehlo-check-shape-assertions: {}",
                        quote(line)
                    ),
                });
            }
            if target.starts_with("stablehlo.dynamic_") {
                return Err(RefineError::Unsupported {
                    construct: format!("stablehlo.custom_call @{target}"),
                    detail: format!(
                        "an XLA-only dynamic custom call is left after refinement: {}",
                        quote(line)
                    ),
                });
            }
        }
        let code = strip_strings(line);
        let op = if code.starts_with('}') {
            let top = open.last().cloned().flatten();
            if !code.ends_with('{') {
                open.pop();
            }
            top
        } else {
            let op = op_name(line);
            if code.ends_with('{') {
                open.push(op.clone());
            }
            op
        };
        let op_label = op.clone().unwrap_or_else(|| "an operation".to_string());
        if code.contains("tensor<?") || code.contains("tensor<*") {
            return Err(RefineError::Unsupported {
                construct: op_label,
                detail: format!("still dynamic after refinement: {}", quote(line)),
            });
        }
        if let Some(op) = op.filter(|o| SHAPE_DYNAMIC_OPS.contains(&o.as_str())) {
            return Err(RefineError::Unsupported {
                construct: op,
                detail: format!(
                    "a shape-dynamic op is left after refinement (its shape is not a constant): {}",
                    quote(line)
                ),
            });
        }
    }
    Ok(())
}

fn quote(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_string();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &line[..end])
}

/// The custom call target on a line: `stablehlo.custom_call @name(` (custom form, the name
/// possibly quoted) or `call_target_name = "name"` (generic form).
fn custom_call_target(line: &str) -> Option<String> {
    if let Some((_, rest)) = line.split_once("stablehlo.custom_call @") {
        if let Some(quoted) = rest.strip_prefix('"') {
            return quoted.split_once('"').map(|(name, _)| name.to_string());
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_.$-".contains(c)))
            .unwrap_or(rest.len());
        return Some(rest[..end].to_string());
    }
    let (_, rest) = line.split_once("call_target_name = \"")?;
    rest.split_once('"').map(|(name, _)| name.to_string())
}

/// The line with the contents of string literals removed (`"..."` → `""`), so that text inside
/// attributes (messages, names) is not mistaken for types.
fn strip_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push('"');
            }
        } else {
            out.push(c);
            if c == '"' {
                in_string = true;
            }
        }
    }
    out
}

/// The op a line starts: `%0 = stablehlo.add ...` → `stablehlo.add`, `func.func public @f(`
/// → `func.func`, `%0 = "stablehlo.foo"(...)` (generic form) → `stablehlo.foo`.
fn op_name(line: &str) -> Option<String> {
    let rest = if line.starts_with('%') {
        line.split_once("= ")?.1
    } else {
        line
    };
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported(text: &str) -> (String, String) {
        match check_static(text) {
            Err(RefineError::Unsupported { construct, detail }) => (construct, detail),
            other => panic!("expected Unsupported for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn static_module_passes() {
        let text = r#"module @m {
  func.func public @main(%arg0: tensor<3x16xf32>) -> (tensor<3x16xf32> {jax.result_info = "tensor<?x"}) {
    %0 = stablehlo.multiply %arg0, %arg0 : tensor<3x16xf32>
    %1 = stablehlo.dynamic_slice %0, %c, %c, sizes = [1, 16] : (tensor<3x16xf32>, tensor<i32>, tensor<i32>) -> tensor<1x16xf32>
    return %0 : tensor<3x16xf32>
  }
}"#;
        assert!(check_static(text).is_ok());
    }

    #[test]
    fn dynamic_leftovers_are_named() {
        let (c, d) = unsupported(
            "    %2 = stablehlo.dynamic_broadcast_in_dim %cst, %1, dims = [] : (tensor<f32>, tensor<2xi32>) -> tensor<?x16xf32>",
        );
        assert_eq!(c, "stablehlo.dynamic_broadcast_in_dim");
        assert!(d.contains("still dynamic"), "{d}");
        let (c, _) = unsupported(
            "%2 = stablehlo.dynamic_reshape %a, %s : (tensor<6xf32>, tensor<2xi32>) -> tensor<2x3xf32>",
        );
        assert_eq!(c, "stablehlo.dynamic_reshape");
        let (c, _) = unsupported("func.func public @main(%arg0: tensor<?x16xf32>) {");
        assert_eq!(c, "func.func");
        let (c, _) = unsupported(
            "%0 = stablehlo.custom_call @stablehlo.dynamic_top_k(%a, %k) : (tensor<5xf32>, tensor<i64>) -> (tensor<2xf32>, tensor<2xi32>)",
        );
        assert_eq!(c, "stablehlo.custom_call @stablehlo.dynamic_top_k");
        let (c, _) = unsupported(
            r#"%0 = "stablehlo.custom_call"(%a) <{call_target_name = "shape_assertion"}> : (tensor<i1>) -> ()"#,
        );
        assert_eq!(c, "stablehlo.custom_call @shape_assertion");
        let (c, _) = unsupported(
            "%0 = stablehlo.reduce(%a init: %b) across dimensions = [1] : (tensor<3x4xf32>, tensor<f32>) -> tensor<3xf32>\n\
             %1 = stablehlo.while(%x = %a) : tensor<?xf32> {",
        );
        assert_eq!(c, "stablehlo.while");
        let (c, _) = unsupported(
            "%1 = \"stablehlo.reduce\"(%a, %b) ({\n  stablehlo.return %x : tensor<f32>\n}) : (tensor<?xf32>, tensor<f32>) -> tensor<f32>",
        );
        assert_eq!(c, "stablehlo.reduce");
        let (c, _) = unsupported("}) : (tensor<?xf32>, tensor<f32>) -> tensor<f32>");
        assert_eq!(c, "an operation");
    }

    #[test]
    fn assertion_messages() {
        assert!(is_malformed_assertion(
            "expects static assert_what (operand #0)"
        ));
        assert!(is_malformed_assertion("foo is not a supported attribute"));
        assert!(!is_malformed_assertion(
            "Input shapes do not match the symbolic shape constraint s <= 8."
        ));
    }
}
