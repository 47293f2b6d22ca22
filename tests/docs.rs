//! The documentation holds together: every relative link in `README.md` and `docs/*.md` reaches a
//! file that exists, and every `#anchor` a heading of the file it points into (named as GitHub
//! names headings); and the README stays a page a learner reads in five minutes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines the README may have; the depth belongs in `docs/`.
const README_MAX_LINES: usize = 300;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `README.md` and every Markdown file of `docs/`.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The text outside fenced code blocks and inline code spans, line by line (code is not
/// Markdown: `a[t](u)` in a code span is no link).
fn prose_lines(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            lines.push(String::new());
            continue;
        }
        if in_fence {
            lines.push(String::new());
            continue;
        }
        // Drop code spans: text between matching runs of backticks.
        let mut out = String::new();
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            out.push_str(&rest[..start]);
            let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
            let after = &rest[start + ticks..];
            let fence = "`".repeat(ticks);
            match after.find(&fence) {
                Some(end) => rest = &after[end + ticks..],
                None => {
                    rest = after;
                    break;
                }
            }
        }
        out.push_str(rest);
        lines.push(out);
    }
    lines
}

/// The targets of the inline links and images of `text`: what stands in `](...)`, with the
/// 1-based line it is on.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (i, line) in prose_lines(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            // `[text](path "title")`: the target is the part before the title.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push((i + 1, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
    }
    targets
}

/// The anchor GitHub gives a heading: lower case, every character but letters, digits, spaces,
/// '-' and '_' removed, spaces turned into '-'. (Inline code, emphasis and link syntax go with
/// the punctuation; a link's text stays.)
fn slug(heading: &str) -> String {
    let mut text = String::new();
    // `[text](url)` reads as its text.
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](") {
            Some(close) => {
                let close = open + close;
                let url_end = rest[close..]
                    .find(')')
                    .map_or(rest.len(), |e| close + e + 1);
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..close]);
                rest = &rest[url_end..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor the headings of `text` get, with GitHub's `-1`, `-2`, ... for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        let heading = &line[level..];
        if level > 6 || !(heading.is_empty() || heading.starts_with(' ')) {
            continue;
        }
        let heading = heading.trim().trim_end_matches('#').trim();
        let base = slug(heading);
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.push(match *count {
            0 => base.clone(),
            n => format!("{base}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// What is wrong with the relative links of `file` (whose text is `text`): one line per link
/// whose file does not exist or whose anchor no heading of that file has.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let dir = file.parent().expect("a file has a directory");
    let mut broken = Vec::new();
    for (line, target) in link_targets(text) {
        let place = format!("{}:{line}: ({target})", file.display());
        if target.is_empty() {
            broken.push(format!("{place}: an empty link"));
            continue;
        }
        let lower = target.to_ascii_lowercase();
        if lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("mailto:")
        {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let resolved = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        if !resolved.exists() {
            broken.push(format!("{place}: {} does not exist", resolved.display()));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        if resolved.is_dir() {
            broken.push(format!("{place}: an anchor into a directory"));
            continue;
        }
        let target_text = match fs::read_to_string(&resolved) {
            Ok(text) => text,
            Err(e) => {
                broken.push(format!("{place}: cannot read {}: {e}", resolved.display()));
                continue;
            }
        };
        let known = anchors(&target_text);
        if !known.iter().any(|a| a == anchor) {
            broken.push(format!(
                "{place}: {} has no heading #{anchor} (its anchors: {})",
                resolved.display(),
                known.join(", ")
            ));
        }
    }
    broken
}

#[test]
fn every_relative_link_of_the_readme_and_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut links = 0;
    for file in documents() {
        let text = fs::read_to_string(&file).expect("the document is readable");
        links += link_targets(&text).len();
        broken.extend(broken_links(&file, &text));
    }
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
    assert!(
        links >= 50,
        "only {links} links found: is the parser still finding them?"
    );
}

#[test]
fn the_readme_is_a_page_read_in_five_minutes() {
    let text = fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    let lines = text.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, more than {README_MAX_LINES}: move the depth into a chapter of docs/"
    );
}

#[test]
fn every_chapter_is_listed_in_the_readme() {
    let readme = fs::read_to_string(root().join("README.md")).expect("README.md is readable");
    let listed: Vec<String> = link_targets(&readme).into_iter().map(|(_, t)| t).collect();
    for file in documents().into_iter().skip(1) {
        let name = format!("docs/{}", file.file_name().unwrap().to_string_lossy());
        assert!(
            listed
                .iter()
                .any(|t| t.split('#').next() == Some(name.as_str())),
            "README.md does not link to {name}"
        );
    }
}

#[test]
fn headings_are_named_as_github_names_them() {
    assert_eq!(
        slug("Read `src/reference/` first"),
        "read-srcreference-first"
    );
    assert_eq!(
        slug("bf16 mixed precision (`--set precision=bf16`)"),
        "bf16-mixed-precision---set-precisionbf16"
    );
    assert_eq!(
        slug("The presets `fast` and `best-1h`"),
        "the-presets-fast-and-best-1h"
    );
    assert_eq!(
        slug("The ideas, one by one, and where they live"),
        "the-ideas-one-by-one-and-where-they-live"
    );
    assert_eq!(slug("See [the API](serve.md#the-api)"), "see-the-api");
    assert_eq!(
        anchors("# A\n## Measured\n```\n# not a heading\n```\n## Measured\n#hashtag\n"),
        ["a", "measured", "measured-1"]
    );
}

#[test]
fn a_broken_link_or_anchor_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("there.md"), "# There\n\n## A section\n").unwrap();
    let text = "[ok](there.md) [ok](there.md#a-section) [ok](#here) [web](https://example.com)\n\
                # Here\n\
                [gone](missing.md) ![gone](missing.png) [bad](there.md#no-such-section) [bad](#nowhere)\n\
                `[code](missing.md)`\n```\n[fenced](missing.md)\n```\n";
    let file = dir.path().join("here.md");
    fs::write(&file, text).unwrap();
    let broken = broken_links(&file, text);
    assert_eq!(broken.len(), 4, "{broken:#?}");
    assert!(broken[0].contains("missing.md") && broken[0].contains("does not exist"));
    assert!(broken[1].contains("missing.png"));
    assert!(broken[2].contains("no heading #no-such-section"));
    assert!(broken[3].contains("no heading #nowhere"));
}
