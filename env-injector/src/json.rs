//! `mirrord-net env --format json`: one JSON object, name to value, sorted by name.
//!
//! JSON strings are Unicode, environment values are bytes. A value that is valid UTF-8 is a
//! string; one that is not is an object `{"bytes": [...]}` with every byte as a number, so
//! nothing is lost and a consumer sees at once that the value is binary. A name that is not
//! UTF-8 cannot be an object key: such names are left out and reported to the caller.

use serde_json::{Map, Value};

use crate::Var;

/// The JSON text (pretty, ending in a newline) and the names left out.
pub fn render(env: &[Var]) -> (String, Vec<Vec<u8>>) {
    let mut object = Map::new();
    let mut skipped = Vec::new();
    for (name, value) in env {
        let Ok(name) = std::str::from_utf8(name) else {
            skipped.push(name.clone());
            continue;
        };
        object.insert(name.to_owned(), value_json(value));
    }
    let mut text =
        serde_json::to_string_pretty(&Value::Object(object)).expect("JSON values always print");
    text.push('\n');
    (text, skipped)
}

fn value_json(value: &[u8]) -> Value {
    match std::str::from_utf8(value) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => {
            let bytes = value.iter().map(|&b| Value::from(b)).collect();
            let mut object = Map::new();
            object.insert("bytes".to_owned(), Value::Array(bytes));
            Value::Object(object)
        }
    }
}

/// Reads [`render`]'s output back (for tests and tools that compare environments).
pub fn parse(text: &str) -> Result<Vec<Var>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let Value::Object(object) = value else {
        return Err("not a JSON object".into());
    };
    object
        .into_iter()
        .map(|(name, value)| {
            let bytes = match value {
                Value::String(text) => text.into_bytes(),
                Value::Object(mut inner) => match inner.remove("bytes") {
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(|item| {
                            item.as_u64()
                                .and_then(|n| u8::try_from(n).ok())
                                .ok_or_else(|| format!("{name}: bad byte {item}"))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(format!("{name}: object without \"bytes\"")),
                },
                other => return Err(format!("{name}: unexpected {other}")),
            };
            Ok((name.into_bytes(), bytes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_values_are_strings_sorted_by_name() {
        let env = vec![
            (b"B".to_vec(), b"two\nlines".to_vec()),
            (b"A".to_vec(), "\u{e9}=\"".as_bytes().to_vec()),
        ];
        let (text, skipped) = render(&env);
        assert!(skipped.is_empty());
        assert_eq!(
            text,
            "{\n  \"A\": \"\u{e9}=\\\"\",\n  \"B\": \"two\\nlines\"\n}\n"
        );
    }

    #[test]
    fn binary_values_become_byte_arrays_and_read_back() {
        let env = vec![(b"BIN".to_vec(), b"a\xff".to_vec())];
        let (text, _) = render(&env);
        assert!(text.contains("\"bytes\": ["), "{text}");
        assert_eq!(parse(&text).unwrap(), env);
    }

    #[test]
    fn non_utf8_names_are_left_out_and_reported() {
        let env = vec![(b"\xffNAME".to_vec(), b"x".to_vec())];
        let (text, skipped) = render(&env);
        assert_eq!(text, "{}\n");
        assert_eq!(skipped, [b"\xffNAME".to_vec()]);
    }
}
