//! The man page `orchestrator.1`, generated from the `--help` text (`USAGE`) so the two
//! cannot drift apart: `make install` writes it with the hidden `--help-man` flag.
//!
//! The mapping is mechanical: the `usage:` line is the SYNOPSIS, the paragraph after it
//! the DESCRIPTION (and its first sentence the NAME line), and each line ending in `:`
//! at the left margin starts a section whose lines are shown as written. Nothing here
//! may add prose of its own: what the page says, `--help` says.

/// The page, in roff (man macros).
pub fn page(usage: &str, version: &str) -> String {
    let mut lines = usage.lines();
    let synopsis = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("usage:")
        .trim();
    let mut description = Vec::new();
    let mut rest = Vec::new();
    for line in lines.by_ref() {
        if is_heading(line) {
            rest.push(line);
            break;
        }
        if !line.trim().is_empty() {
            description.push(line.trim());
        }
    }
    rest.extend(lines);
    let description = description.join(" ");
    let summary = description
        .split_once(". ")
        .map_or(description.as_str(), |(first, _)| first)
        .trim_end_matches('.');

    // No hyphenation and no justification: a word of the help text stays whole, so
    // the rendered page can be searched for it.
    let mut out = format!(
        ".TH ORCHESTRATOR 1 \"\" \"orchestrator {}\" \"User Commands\"\n.nh\n.ad l\n",
        escape(version)
    );
    out.push_str(&format!(
        ".SH NAME\norchestrator \\- {}\n",
        escape(&lowercase_first(summary))
    ));
    out.push_str(&format!(".SH SYNOPSIS\n.nf\n{}\n.fi\n", escape(synopsis)));
    out.push_str(&format!(".SH DESCRIPTION\n{}\n", escape(&description)));
    let mut open = false;
    for line in rest {
        if is_heading(line) {
            if open {
                out.push_str(".fi\n");
            }
            let title = line.trim_end_matches(':').to_ascii_uppercase();
            out.push_str(&format!(".SH {}\n.nf\n", escape(&title)));
            open = true;
        } else if line.trim().is_empty() {
            out.push('\n');
        } else {
            out.push_str(&escape(line));
            out.push('\n');
        }
    }
    if open {
        out.push_str(".fi\n");
    }
    out
}

fn is_heading(line: &str) -> bool {
    !line.starts_with(' ') && line.ends_with(':')
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| std::iter::once(f.to_ascii_lowercase()).chain(c).collect())
        .unwrap_or_default()
}

/// Text made literal for roff: backslashes and dashes escaped, a leading `.` or `'`
/// (a request) neutralised.
fn escape(s: &str) -> String {
    let body = s.replace('\\', "\\e").replace('-', "\\-");
    if body.starts_with('.') || body.starts_with('\'') {
        format!("\\&{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_come_from_the_help_text() {
        let usage =
            "usage: prog <cmd>\n\nDoes things. And more.\n\ncommands:\n  run   --now\n.dot\n";
        let p = page(usage, "1.0");
        assert!(
            p.contains(".SH NAME\norchestrator \\- does things\n"),
            "{p}"
        );
        assert!(p.contains(".SH SYNOPSIS\n.nf\nprog <cmd>\n.fi\n"), "{p}");
        assert!(
            p.contains(".SH COMMANDS\n.nf\n  run   \\-\\-now\n\\&.dot\n.fi\n"),
            "{p}"
        );
    }
}
