//! The guest kernel's symbols, for crash reports: from the symbol table of
//! an ELF vmlinux, or from a System.map. The file is opened when the VM is
//! built (once it runs, hvm may open nothing new: landlock.rs) and read
//! only when a report needs it, so a VM that never crashes never reads it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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

/// Where the symbols are: the file, open (or why it could not be opened).
#[derive(Debug)]
pub struct SymbolsFile {
    path: PathBuf,
    file: std::io::Result<File>,
}

impl SymbolsFile {
    pub fn open(path: PathBuf) -> SymbolsFile {
        let file = File::open(&path);
        SymbolsFile { path, file }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the symbols: an ELF file's symbol table, or a System.map.
    pub fn load(&self) -> Result<Symbols, SymbolsError> {
        let read_error = |source| SymbolsError::Read {
            path: self.path.clone(),
            source,
        };
        let mut file = match &self.file {
            Ok(f) => f,
            Err(e) => {
                return Err(read_error(match e.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(e.kind(), e.to_string()),
                }))
            }
        };
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut data))
            .map_err(read_error)?;
        Symbols::parse(&self.path, &data)
    }
}

impl Symbols {
    fn parse(path: &Path, data: &[u8]) -> Result<Symbols, SymbolsError> {
        let format = |why: String| SymbolsError::Format {
            path: path.to_path_buf(),
            why,
        };
        if data.starts_with(b"\x7fELF") {
            Symbols::from_elf(data).map_err(format)
        } else if data.get(0x202..0x206) == Some(b"HdrS") {
            // The usual case: the crash report's default is the kernel itself.
            Err(format(
                "a bzImage keeps no symbol table; give the vmlinux it was built from, or its System.map"
                    .into(),
            ))
        } else {
            Symbols::from_system_map(&String::from_utf8_lossy(data)).map_err(format)
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
        for (number, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                // Quote a little of it: the file may be binary.
                let quoted: String = line.chars().take(40).collect();
                return Err(format!(
                    "line {} ({quoted:?}) does not start with a hexadecimal address",
                    number + 1
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
        let s = SymbolsFile::open(elf.into()).load().unwrap();
        let main = s.text.iter().find(|x| x.name == "hvmtest_main").unwrap();
        let inside = s.name(main.addr + 1).unwrap();
        assert!(inside.starts_with("hvmtest_main+0x1/"), "{inside}");
    }

    #[test]
    fn unreadable_or_foreign_files_say_why() {
        let e = SymbolsFile::open("/nonexistent/System.map".into())
            .load()
            .unwrap_err();
        assert!(e
            .to_string()
            .contains("cannot read /nonexistent/System.map"));
        let bz = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/guest-images/tiny/hvmtest.bzImage"
        );
        let e = SymbolsFile::open(bz.into()).load().unwrap_err().to_string();
        assert!(e.contains("a bzImage keeps no symbol table"), "{e}");
        let e = Symbols::parse(
            Path::new("x"),
            b"ffff T a\n\xff\xfe garbage that goes on and on and on and on and on",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 2 (") && !e.contains("on and on and on and on"),
            "{e}"
        );
    }
}
