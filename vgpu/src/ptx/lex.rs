//! Splits PTX text into items: statements (up to `;`), labels, scope braces and function headers.
//!
//! One pass over the bytes, no allocation per item (items borrow the text). Comments (`//`,
//! `/* */`) and the newline-terminated debug directives (`.loc`, `.file`) are skipped; the header
//! directives (`.version`, `.target`, `.address_size`) end at the newline; string literals
//! (pragmas) are kept intact. A `{` opens a scope
//! when it starts a statement, ends a function header when the statement so far declares an
//! `.entry`/`.func`, and is otherwise part of the statement (vector operands, initialisers).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    /// A statement without its `;`, trimmed.
    Stmt(&'a str),
    Label(&'a str),
    Open,
    Close,
    /// An `.entry`/`.func` declaration up to its body's `{`.
    Header(&'a str),
}

pub struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    line: u32,
}

impl<'a> Lexer<'a> {
    pub fn new(text: &'a str) -> Self {
        Lexer { text, pos: 0, line: 1 }
    }

    /// The next item and the line it starts on; `None` at the end. Text left without a closing
    /// `;` is returned as a statement (the parser reports it).
    pub fn next_item(&mut self) -> Option<(u32, Item<'a>)> {
        let bytes = self.text.as_bytes();
        let mut start: Option<(usize, u32)> = None;
        let mut depth = 0u32;
        while self.pos < bytes.len() {
            let c = bytes[self.pos];
            match c {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    self.pos += 1;
                    continue;
                }
                b'/' if bytes.get(self.pos + 1) == Some(&b'/') => {
                    while self.pos < bytes.len() && bytes[self.pos] != b'\n' {
                        self.pos += 1;
                    }
                    continue;
                }
                b'/' if bytes.get(self.pos + 1) == Some(&b'*') => {
                    self.pos += 2;
                    while self.pos < bytes.len() && !(bytes[self.pos] == b'*' && bytes.get(self.pos + 1) == Some(&b'/')) {
                        if bytes[self.pos] == b'\n' {
                            self.line += 1;
                        }
                        self.pos += 1;
                    }
                    self.pos += 2;
                    continue;
                }
                _ => {}
            }
            if start.is_none() && [".loc", ".file"].iter().any(|d| self.text[self.pos..].strip_prefix(d).is_some_and(|r| r.starts_with([' ', '\t']))) {
                // Debug-line directives end at the newline, without `;` (`.local` is no `.loc`).
                while self.pos < bytes.len() && bytes[self.pos] != b'\n' {
                    self.pos += 1;
                }
                continue;
            }
            if start.is_none() && [".version", ".target", ".address_size"].iter().any(|d| self.text[self.pos..].starts_with(d)) {
                // Module header directives also end at the newline, without `;`: one statement each,
                // so they never swallow the declaration after them.
                let (s, line) = (self.pos, self.line);
                while self.pos < bytes.len() && bytes[self.pos] != b'\n' {
                    self.pos += 1;
                }
                return Some((line, Item::Stmt(self.text[s..self.pos].trim())));
            }
            if start.is_none() && self.text[self.pos..].starts_with(".section") {
                // Debug sections (`.section .debug_str { ... }`) carry nothing to execute.
                let mut depth = 0;
                while self.pos < bytes.len() {
                    match bytes[self.pos] {
                        b'\n' => self.line += 1,
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                self.pos += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
                continue;
            }
            let (s, line) = *start.get_or_insert((self.pos, self.line));
            match c {
                b'"' => {
                    self.pos += 1;
                    while self.pos < bytes.len() && bytes[self.pos] != b'"' {
                        self.pos += 1;
                    }
                    self.pos += 1;
                }
                b';' if depth == 0 => {
                    self.pos += 1;
                    return Some((line, Item::Stmt(self.text[s..self.pos - 1].trim())));
                }
                b'{' => {
                    self.pos += 1;
                    if s + 1 == self.pos {
                        return Some((line, Item::Open));
                    }
                    let so_far = &self.text[s..self.pos - 1];
                    if depth == 0 && (so_far.contains(".entry") || so_far.contains(".func")) {
                        return Some((line, Item::Header(so_far.trim())));
                    }
                    depth += 1;
                }
                b'}' => {
                    self.pos += 1;
                    if depth == 0 {
                        if s + 1 == self.pos {
                            return Some((line, Item::Close));
                        }
                        // `}` right after text without `;`: hand the text back; the `}` comes next.
                        self.pos -= 1;
                        return Some((line, Item::Stmt(self.text[s..self.pos].trim())));
                    }
                    depth -= 1;
                }
                b':' if depth == 0 && bytes.get(self.pos + 1) != Some(&b':') && (self.pos == 0 || bytes[self.pos - 1] != b':') => {
                    let word = &self.text[s..self.pos];
                    self.pos += 1;
                    if is_ident(word) {
                        return Some((line, Item::Label(word)));
                    }
                }
                _ => self.pos += 1,
            }
        }
        start.map(|(s, line)| (line, Item::Stmt(self.text[s..].trim())))
    }
}

pub fn is_ident(s: &str) -> bool {
    let mut chars = s.bytes();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
}
