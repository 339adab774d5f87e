//! Facts that every attune engine (evaluation, mining, training, the index) must agree on, with
//! one owner each: the text a document is embedded as ([`embedding_text`]); and how a setting
//! spelled as on the command line is written to and read from JSON and TOML
//! ([`serde_via_str!`]).
//!
//! When evaluation embedded `title + " " + text` trimmed and the index embedded it untrimmed, the
//! evaluated vectors were not the served ones (with a SentencePiece tokenizer a leading space
//! changes the tokens). Every crate now calls [`embedding_text`].

#![warn(missing_docs)]

/// The text a document is embedded as: its title and body text, each trimmed of surrounding
/// whitespace, joined by one space; a part that is empty after trimming is left out (the
/// sentence-transformers/BEIR convention, `(title + " " + text).strip()`, applied per part).
///
/// ```
/// assert_eq!(attune_core::embedding_text(" Boot ", "red  leather\n"), "Boot red  leather");
/// assert_eq!(attune_core::embedding_text("", " text"), "text");
/// assert_eq!(attune_core::embedding_text("title", "  "), "title");
/// ```
pub fn embedding_text(title: &str, text: &str) -> String {
    let title = title.trim();
    let text = text.trim();
    match (title.is_empty(), text.is_empty()) {
        (true, _) => text.to_string(),
        (false, true) => title.to_string(),
        (false, false) => format!("{title} {text}"),
    }
}

/// Implements `serde::Serialize` and `serde::Deserialize` for a type through its `Display` and
/// `FromStr`, so a setting is written and read exactly as the command line spells it (`"bf16"`,
/// `"cuda:1"`, `"10:50"`). The calling crate depends on serde.
#[macro_export]
macro_rules! serde_via_str {
    ($type:ty) => {
        impl ::serde::Serialize for $type {
            fn serialize<S: ::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $type {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                let text =
                    <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::embedding_text;

    #[test]
    fn parts_are_trimmed_and_empty_parts_left_out() {
        assert_eq!(embedding_text("T", "body"), "T body");
        assert_eq!(embedding_text("  T\t", "\n body "), "T body");
        assert_eq!(embedding_text("   ", "body"), "body");
        assert_eq!(embedding_text("T", ""), "T");
        assert_eq!(embedding_text("", ""), "");
        // Inner whitespace is the document's own and is kept.
        assert_eq!(embedding_text("a  b", "c\nd"), "a  b c\nd");
    }
}
