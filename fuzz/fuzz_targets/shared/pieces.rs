//! How the stream-reading targets (`framing`, `answer`) cut their input
//! into reads: included by both with `#[path]` (each target is a crate of
//! its own).

/// `bytes` cut into reads whose lengths cycle through three values `pattern`
/// chooses (1 to 61 bytes).
pub fn pieces(bytes: &[u8], pattern: u8) -> Vec<&[u8]> {
    let lens = [1 + usize::from(pattern % 7), 1 + usize::from(pattern % 13), 1 + usize::from(pattern % 61)];
    let mut rest = bytes;
    let mut out = Vec::new();
    for n in lens.into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}
