//! Name and path patterns: `*` matches any run of characters, `?` one character. Used for the
//! tunnel names a token may bind, the tunnels recorded by policy, and the paths of a trail query.

/// A pattern of paths or tunnel names: `*` matches any run of characters (`/` included), `?`
/// one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

impl Glob {
    /// Whether `text` (a path without its query, a name) matches.
    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.0.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard match with one backtrack point: linear in practice, never exponential.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell_without_blowing_up() {
        let glob = |p: &str, t: &str| Glob(p.into()).matches(t);
        assert!(glob("/api/*", "/api/users/1"));
        assert!(glob("/api/*/orders", "/api/7/orders"));
        assert!(!glob("/api/*/orders", "/api/7/order"));
        assert!(glob("/a?c", "/abc"));
        assert!(glob("*", ""));
        assert!(!glob("/x", "/xy"));
        let long = "a".repeat(5000);
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &long), "no match, and no exponential backtracking");
    }
}
