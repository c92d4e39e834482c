//! Diagnostics: one located error in a configuration file, printed as `path:line:column: /field: message`.

use std::fmt;

use serde::Serialize;

use crate::yaml::{Located, Pos, YamlError};

/// One problem found in a configuration source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// The file (as given, relative paths stay relative), or `$ARES_X` for an environment variable.
    pub file: String,
    /// 1-based line, when the problem has a place in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// 1-based column, when the problem has a place in a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// JSON pointer of the field (`/temperature`), empty for the whole document.
    pub pointer: String,
    pub message: String,
}

impl Diagnostic {
    /// A problem with a whole file or folder (unreadable, misplaced, ...).
    pub fn file(file: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: None,
            column: None,
            pointer: String::new(),
            message: message.into(),
        }
    }

    /// A problem at a position in a file.
    pub fn at(
        file: impl Into<String>,
        pos: Pos,
        pointer: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line: Some(pos.line),
            column: Some(pos.column),
            pointer: pointer.into(),
            message: message.into(),
        }
    }

    /// A YAML syntax error.
    pub fn yaml(file: impl Into<String>, e: YamlError) -> Self {
        Diagnostic::at(file, e.pos, "", format!("invalid YAML: {}", e.message))
    }

    /// A problem with the value at `pointer` of a parsed document.
    pub fn field(file: &str, doc: &Located, pointer: &str, message: impl Into<String>) -> Self {
        Diagnostic::at(file, doc.pos(pointer), pointer, message)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        if !self.pointer.is_empty() {
            write!(f, ": {}", self.pointer)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Errors from loading one configuration source: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
