//! The guest kernel's symbols, for crash reports: from the symbol table of
//! an ELF vmlinux, or from a System.map. Loaded only when a report needs
//! them, so a VM that never crashes never reads them.

use std::path::{Path, PathBuf};

/// Errors while reading symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ELF file with a symbol table, nor a System.map: {why}")]
    Format { path: PathBuf, why: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    /// 0 when unknown (System.map): the next symbol ends it.
    size: u64,
    name: String,
}

/// Function symbols sorted by address.
#[derive(Debug, Default)]
pub struct Symbols {
    text: Vec<Symbol>,
}

/// The longest a symbol without a size is taken to run (past it, an
/// address is "not in the symbols", not the last function + a megabyte).
const UNSIZED_LIMIT: u64 = 1 << 16;

impl Symbols {
    /// Reads `path`: an ELF file's symbol table, or a System.map.
    pub fn load(path: &Path) -> Result<Symbols, SymbolsError> {
        let data = std::fs::read(path).map_err(|source| SymbolsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |why: String| SymbolsError::Format {
            path: path.to_path_buf(),
            why,
        };
        if data.starts_with(b"\x7fELF") {
            Symbols::from_elf(&data).map_err(format)
        } else {
            Symbols::from_system_map(&String::from_utf8_lossy(&data)).map_err(format)
        }
    }

    fn from_elf(data: &[u8]) -> Result<Symbols, String> {
        use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
        let file = object::File::parse(data).map_err(|e| e.to_string())?;
        // Functions, and untyped labels in code (assembly entry points
        // such as the kernel's entry_SYSCALL_64 carry no type).
        let in_code = |s: &object::Symbol| {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .is_some_and(|sec| sec.kind() == SectionKind::Text)
        };
        let text = file
            .symbols()
            .filter(|s| {
                s.address() != 0
                    && (s.kind() == SymbolKind::Text
                        || (s.kind() == SymbolKind::Unknown && in_code(s)))
            })
            .filter_map(|s| {
                Some(Symbol {
                    addr: s.address(),
                    size: s.size(),
                    name: s.name().ok()?.to_string(),
                })
            })
            .collect();
        Symbols::sorted(text).ok_or_else(|| "it has no function symbols (stripped?)".into())
    }

    /// `ffffffff81000000 T _stext` lines; text symbols (T, t, W, w) only.
    fn from_system_map(text: &str) -> Result<Symbols, String> {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                return Err(format!(
                    "{line:?} does not start with a hexadecimal address"
                ));
            };
            if matches!(kind, "T" | "t" | "W" | "w") && addr != 0 {
                syms.push(Symbol {
                    addr,
                    size: 0,
                    name: name.to_string(),
                });
            }
        }
        Symbols::sorted(syms).ok_or_else(|| "no text symbols (T or t lines)".into())
    }

    fn sorted(mut text: Vec<Symbol>) -> Option<Symbols> {
        if text.is_empty() {
            return None;
        }
        text.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.size.cmp(&a.size)));
        text.dedup_by_key(|s| s.addr);
        Some(Symbols { text })
    }

    /// `function+0xoffset/0xsize` (the kernel's own notation) for an
    /// address inside a known function; None elsewhere.
    pub fn name(&self, addr: u64) -> Option<String> {
        let i = self
            .text
            .partition_point(|s| s.addr <= addr)
            .checked_sub(1)?;
        let sym = &self.text[i];
        let offset = addr - sym.addr;
        let end = match (sym.size, self.text.get(i + 1)) {
            (0, Some(next)) => (next.addr - sym.addr).min(UNSIZED_LIMIT),
            (0, None) => UNSIZED_LIMIT,
            (size, _) => size,
        };
        if offset >= end {
            return None;
        }
        Some(if sym.size > 0 {
            format!("{}+{offset:#x}/{:#x}", sym.name, sym.size)
        } else {
            format!("{}+{offset:#x}", sym.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_map_names_addresses_inside_functions_only() {
        let map = "ffffffff81000000 T _stext\nffffffff81000100 t helper\n\
                   ffffffff81000180 D some_data\nffffffff81000200 T panic\n";
        let s = Symbols::from_system_map(map).unwrap();
        assert_eq!(s.name(0xffff_ffff_8100_0104).as_deref(), Some("helper+0x4"));
        assert_eq!(s.name(0xffff_ffff_8100_0200).as_deref(), Some("panic+0x0"));
        assert_eq!(s.name(0xffff_ffff_8000_0000), None);
        // Far past the last function: not "panic+0x7fff0000".
        assert_eq!(s.name(0xffff_ffff_ff00_0000), None);
        assert!(Symbols::from_system_map("hello world\n").is_err());
        assert!(Symbols::from_system_map("ffffffff81000000 D only_data\n").is_err());
    }

    #[test]
    fn the_tiny_guests_elf_symbols_are_read() {
        let elf = concat!(env!("CARGO_MANIFEST_DIR"), "/guest-images/tiny/hvmtest.elf");
        let s = Symbols::load(Path::new(elf)).unwrap();
        let main = s.text.iter().find(|x| x.name == "hvmtest_main").unwrap();
        let inside = s.name(main.addr + 1).unwrap();
        assert!(inside.starts_with("hvmtest_main+0x1/"), "{inside}");
    }

    #[test]
    fn unreadable_or_foreign_files_say_why() {
        let e = Symbols::load(Path::new("/nonexistent/System.map")).unwrap_err();
        assert!(e
            .to_string()
            .contains("cannot read /nonexistent/System.map"));
        let bz = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/guest-images/tiny/hvmtest.bzImage"
        );
        assert!(Symbols::load(Path::new(bz)).is_err());
    }
}
