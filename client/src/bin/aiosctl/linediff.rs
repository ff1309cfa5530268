//! A small line diff for `aiosctl diff`: longest common subsequence over
//! lines (quadratic, fine for one resource's YAML), printed as unified
//! hunks with context.

/// One line of the edit script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit<'a> {
    /// In both.
    Same(&'a str),
    /// Only in the old text.
    Removed(&'a str),
    /// Only in the new text.
    Added(&'a str),
}

/// The edit script turning `old` into `new`, line by line. Among equally
/// short scripts it removes before it adds, as `diff` does.
pub fn edits<'a>(old: &'a str, new: &'a str) -> Vec<Edit<'a>> {
    let old: Vec<&str> = old.lines().collect();
    let new: Vec<&str> = new.lines().collect();
    // lcs[i][j]: length of the LCS of old[i..] and new[j..].
    let mut lcs = vec![vec![0usize; new.len() + 1]; old.len() + 1];
    for i in (0..old.len()).rev() {
        for j in (0..new.len()).rev() {
            lcs[i][j] = if old[i] == new[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut script = Vec::with_capacity(old.len() + new.len());
    while i < old.len() || j < new.len() {
        if i < old.len() && j < new.len() && old[i] == new[j] {
            script.push(Edit::Same(old[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < old.len() && (j == new.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            script.push(Edit::Removed(old[i]));
            i += 1;
        } else {
            script.push(Edit::Added(new[j]));
            j += 1;
        }
    }
    script
}

/// Unified hunks (`@@ -l,n +l,n @@`, then ` `/`-`/`+` lines) with
/// `context` unchanged lines around each change; empty if equal.
pub fn unified(old: &str, new: &str, context: usize) -> String {
    let script = edits(old, new);
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for (index, edit) in script.iter().enumerate() {
        if matches!(edit, Edit::Same(_)) {
            continue;
        }
        let start = index.saturating_sub(context);
        let end = (index + 1 + context).min(script.len());
        match hunks.last_mut() {
            // Contexts touch or overlap: one hunk.
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut text = String::new();
    for (start, end) in hunks {
        let before = &script[..start];
        let old_line = before
            .iter()
            .filter(|e| !matches!(e, Edit::Added(_)))
            .count();
        let new_line = before
            .iter()
            .filter(|e| !matches!(e, Edit::Removed(_)))
            .count();
        let hunk = &script[start..end];
        let old_count = hunk.iter().filter(|e| !matches!(e, Edit::Added(_))).count();
        let new_count = hunk
            .iter()
            .filter(|e| !matches!(e, Edit::Removed(_)))
            .count();
        // Unified diffs number from 1; an empty side names the line before.
        let first = |line: usize, count: usize| if count == 0 { line } else { line + 1 };
        text.push_str(&format!(
            "@@ -{},{old_count} +{},{new_count} @@\n",
            first(old_line, old_count),
            first(new_line, new_count)
        ));
        for edit in hunk {
            let (mark, line) = match edit {
                Edit::Same(line) => (' ', line),
                Edit::Removed(line) => ('-', line),
                Edit::Added(line) => ('+', line),
            };
            text.push(mark);
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_have_no_hunks() {
        assert_eq!(unified("a\nb\n", "a\nb\n", 3), "");
        assert_eq!(edits("a\nb", "a\nb"), [Edit::Same("a"), Edit::Same("b")]);
    }

    #[test]
    fn a_changed_line_is_removed_then_added() {
        assert_eq!(
            edits("a\nb\nc\n", "a\nB\nc\nd\n"),
            [
                Edit::Same("a"),
                Edit::Removed("b"),
                Edit::Added("B"),
                Edit::Same("c"),
                Edit::Added("d"),
            ]
        );
    }

    #[test]
    fn everything_is_added_to_nothing() {
        assert_eq!(unified("", "a\nb\n", 3), "@@ -0,0 +1,2 @@\n+a\n+b\n");
        assert_eq!(unified("a\n", "", 3), "@@ -1,1 +0,0 @@\n-a\n");
    }

    #[test]
    fn distant_changes_get_separate_hunks_with_context() {
        let old: String = (1..=12).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=12)
            .map(|i| match i {
                2 => "two\n".to_string(),
                11 => "eleven\n".to_string(),
                i => format!("{i}\n"),
            })
            .collect();
        assert_eq!(
            unified(&old, &new, 1),
            "@@ -1,3 +1,3 @@\n 1\n-2\n+two\n 3\n@@ -10,3 +10,3 @@\n 10\n-11\n+eleven\n 12\n"
        );
        // With more context the two hunks merge into one.
        assert!(unified(&old, &new, 4).starts_with("@@ -1,12 +1,12 @@\n"));
    }
}
