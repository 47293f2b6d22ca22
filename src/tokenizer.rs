//! Character tokenizer: the vocabulary is the sorted set of distinct characters of a text.
//!
//! Token ids are indices into that sorted list, so for Tiny Shakespeare `'\n'` is 0 and `' '` is 1,
//! as in the lecture. "Character" means a Unicode scalar value (`char`), so any UTF-8 text works.

use std::collections::HashMap;

/// A token id: an index into [`Tokenizer::chars`].
pub type TokenId = u32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    #[error("character {character:?} at position {position} is not in the model's vocabulary")]
    UnknownCharacter { character: char, position: usize },
    #[error("token id {0} is outside the vocabulary")]
    UnknownId(TokenId),
    #[error("the vocabulary is empty: the text has no characters")]
    EmptyVocabulary,
    #[error("the vocabulary lists {0:?} more than once")]
    DuplicateCharacter(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenizer {
    chars: Vec<char>,
    ids: HashMap<char, TokenId>,
}

impl Tokenizer {
    /// Builds the vocabulary of `text`: its distinct characters in sorted order.
    pub fn from_text(text: &str) -> Result<Self, TokenizerError> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// Rebuilds a tokenizer from a saved vocabulary (the order is kept as given).
    pub fn from_chars(chars: Vec<char>) -> Result<Self, TokenizerError> {
        if chars.is_empty() {
            return Err(TokenizerError::EmptyVocabulary);
        }
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, i as TokenId).is_some() {
                return Err(TokenizerError::DuplicateCharacter(c));
            }
        }
        Ok(Tokenizer { chars, ids })
    }

    /// This vocabulary with `added` characters appended after the existing ones (in the order
    /// given; ones already present are skipped): every existing id keeps its character, so a
    /// model trained on the old vocabulary keeps its meaning for them.
    pub fn extended(&self, added: &[char]) -> Result<Self, TokenizerError> {
        let mut chars = self.chars.clone();
        for &c in added {
            if !self.ids.contains_key(&c) && !chars[self.chars.len()..].contains(&c) {
                chars.push(c);
            }
        }
        Self::from_chars(chars)
    }

    pub fn vocab_size(&self) -> usize {
        self.chars.len()
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn id(&self, c: char) -> Option<TokenId> {
        self.ids.get(&c).copied()
    }

    /// Encodes every character; the first one outside the vocabulary is an error naming it and its
    /// position (counted in characters from 0).
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>, TokenizerError> {
        text.chars()
            .enumerate()
            .map(|(position, character)| {
                self.id(character).ok_or(TokenizerError::UnknownCharacter {
                    character,
                    position,
                })
            })
            .collect()
    }

    /// The distinct characters of `text` that are not in the vocabulary, in order of first use.
    pub fn unknown_chars(&self, text: &str) -> Vec<char> {
        let mut unknown = Vec::new();
        for c in text.chars() {
            if !self.ids.contains_key(&c) && !unknown.contains(&c) {
                unknown.push(c);
            }
        }
        unknown
    }

    pub fn decode(&self, ids: &[TokenId]) -> Result<String, TokenizerError> {
        ids.iter().map(|&id| self.decode_one(id)).collect()
    }

    pub fn decode_one(&self, id: TokenId) -> Result<char, TokenizerError> {
        self.chars
            .get(id as usize)
            .copied()
            .ok_or(TokenizerError::UnknownId(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_utf8() {
        let text = "héllo wörld\n日本語 🎭!";
        let tok = Tokenizer::from_text(text).unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        let mut sorted = tok.chars().to_vec();
        sorted.sort();
        assert_eq!(sorted, tok.chars());
    }

    #[test]
    fn shakespeare_ids_match_the_lecture() {
        let tok =
            Tokenizer::from_text("First Citizen:\nBefore we proceed any further, hear me speak.")
                .unwrap();
        assert_eq!(tok.id('\n'), Some(0));
        assert_eq!(tok.id(' '), Some(1));
    }

    #[test]
    fn unknown_character_names_character_and_position() {
        let tok = Tokenizer::from_text("abc").unwrap();
        let err = tok.encode("abxc").unwrap_err();
        assert_eq!(
            err,
            TokenizerError::UnknownCharacter {
                character: 'x',
                position: 2
            }
        );
        assert!(err.to_string().contains("'x'") && err.to_string().contains("position 2"));
        assert_eq!(tok.unknown_chars("xyzx a"), vec!['x', 'y', 'z', ' ']);
        assert!(tok.decode(&[3]).is_err());
        assert!(Tokenizer::from_text("").is_err());
        assert!(Tokenizer::from_chars(vec!['a', 'a']).is_err());
    }

    #[test]
    fn extending_keeps_every_old_id() {
        let tok = Tokenizer::from_text("cab").unwrap();
        let ext = tok.extended(&['é', 'a', '{', 'é']).unwrap();
        assert_eq!(ext.chars(), &['a', 'b', 'c', 'é', '{']);
        for &c in tok.chars() {
            assert_eq!(tok.id(c), ext.id(c));
        }
    }
}
