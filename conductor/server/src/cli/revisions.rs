//! `conductor pipeline diff|revisions|approve|reject`: pipeline revisions
//! and the approvals that revisions weakening safety wait for.

use super::*;

pub(super) async fn diff(
    name: String,
    revision: Option<i64>,
    conn: Conn,
    json_out: bool,
) -> CliResult {
    let client = Client::new(&conn)?;
    let rev = match revision {
        Some(r) => r,
        None => {
            // The newest pending revision, else the one in effect.
            let v = client
                .get(&format!("/pipelines/{}/revisions", enc(&name)))
                .await?;
            let revs = v["revisions"].as_array().cloned().unwrap_or_default();
            revs.iter()
                .find(|r| r["status"] == "pending")
                .or_else(|| revs.iter().find(|r| r["revision"] == v["in_effect"]))
                .and_then(|r| r["revision"].as_i64())
                .ok_or_else(|| {
                    CliError::usage(format!("pipeline {name} has no revision to show"))
                })?
        }
    };
    let v = client
        .get(&format!("/pipelines/{}/revisions/{rev}", enc(&name)))
        .await?;
    if json_out {
        print_json(&v);
        return Ok(exit::OK);
    }
    let r = &v["revision"];
    println!(
        "pipeline {name} revision {rev}: {} (submitted by {} at {}){}",
        s(&r["status"]),
        s(&r["submitted_by"]),
        s(&r["submitted_at"]),
        match v["in_effect"].as_i64() {
            Some(e) if e == rev => "; in effect".to_string(),
            Some(e) => format!("; revision {e} is in effect"),
            None => String::new(),
        }
    );
    if let Some(by) = r["decided_by"].as_str() {
        println!("  {} by {by}: {}", s(&r["status"]), s(&r["reason"]));
    }
    print_findings(r);
    let (old, label) = match v["base"].as_object() {
        Some(b) => (
            b.get("yaml").and_then(Value::as_str).unwrap_or(""),
            format!(
                "{name} revision {}",
                b.get("revision").map_or("?".into(), |x| x.to_string())
            ),
        ),
        None => ("", "(nothing: the first revision)".to_string()),
    };
    let new = r["yaml"].as_str().unwrap_or("");
    let lines = unified_diff(old, new, 3);
    println!();
    if lines.is_empty() {
        println!("no change to the YAML");
    } else {
        println!("--- {label}\n+++ {name} revision {rev}");
        for l in lines {
            println!("{l}");
        }
    }
    Ok(exit::OK)
}

/// What a revision weakens and who may approve it.
pub(super) fn print_findings(r: &Value) {
    let findings = r["findings"].as_array().cloned().unwrap_or_default();
    if findings.is_empty() {
        return;
    }
    let groups: Vec<String> = r["approver_groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!(
        "it weakens the pipeline's safety, so it needs the approval of {} (not {}):",
        if groups.is_empty() {
            "an approver".to_string()
        } else {
            format!("a member of {}", groups.join(" and "))
        },
        s(&r["submitted_by"])
    );
    for f in findings {
        println!("  - {}", s(&f));
    }
}

pub(super) async fn list(name: String, conn: Conn, json_out: bool) -> CliResult {
    let v = Client::new(&conn)?
        .get(&format!("/pipelines/{}/revisions", enc(&name)))
        .await?;
    if json_out {
        print_json(&v);
        return Ok(exit::OK);
    }
    println!(
        "{:<5} {:<11} {:<16} {:<28} DECIDED BY",
        "REV", "STATUS", "BY", "SUBMITTED"
    );
    for r in v["revisions"].as_array().into_iter().flatten() {
        let mark = if r["revision"] == v["in_effect"] {
            "*"
        } else {
            ""
        };
        println!(
            "{:<5} {:<11} {:<16} {:<28} {}",
            format!("{}{mark}", r["revision"]),
            s(&r["status"]),
            s(&r["submitted_by"]),
            s(&r["submitted_at"]),
            s(&r["decided_by"])
        );
    }
    println!("(* in effect)");
    Ok(exit::OK)
}

pub(super) async fn decide(
    name: String,
    revision: i64,
    reason: Option<String>,
    approve: bool,
    conn: Conn,
) -> CliResult {
    let verb = if approve { "approve" } else { "reject" };
    let v = Client::new(&conn)?
        .post(
            &format!("/pipelines/{}/revisions/{revision}/{verb}", enc(&name)),
            json!({ "reason": reason.unwrap_or_default() }),
        )
        .await?;
    let status = s(&v["revision"]["status"]);
    if approve {
        println!("{name} revision {revision} {status}: it is in effect; new trains use it");
    } else {
        println!("{name} revision {revision} {status}");
    }
    Ok(exit::OK)
}

/// A unified diff of two texts by lines (`@@ -a,b +c,d @@` hunks with
/// `context` lines around each change). Empty when they are equal.
pub(super) fn unified_diff(old: &str, new: &str, context: usize) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let ops = line_ops(&a, &b);
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| *op != ' ')
        .map(|(i, _)| i)
        .collect();
    let Some(&first) = changed.first() else {
        return Vec::new();
    };
    // Group changes whose context overlaps into hunks.
    let mut groups = vec![(first, first)];
    for &i in &changed[1..] {
        match groups.last_mut() {
            Some(g) if i - g.1 <= 2 * context + 1 => g.1 = i,
            _ => groups.push((i, i)),
        }
    }
    // Line numbers (1-based) in each text at every op.
    let mut at = Vec::with_capacity(ops.len() + 1);
    let (mut x, mut y) = (1, 1);
    for (op, _) in &ops {
        at.push((x, y));
        match op {
            '-' => x += 1,
            '+' => y += 1,
            _ => {
                x += 1;
                y += 1;
            }
        }
    }
    let mut out = Vec::new();
    for (s, e) in groups {
        let (from, to) = (s.saturating_sub(context), (e + context + 1).min(ops.len()));
        let hunk = &ops[from..to];
        let olds = hunk.iter().filter(|(op, _)| *op != '+').count();
        let news = hunk.iter().filter(|(op, _)| *op != '-').count();
        let (ox, ny) = at[from];
        let start = |n: usize, l: usize| if n == 0 { l - 1 } else { l };
        out.push(format!(
            "@@ -{},{olds} +{},{news} @@",
            start(olds, ox),
            start(news, ny)
        ));
        out.extend(hunk.iter().map(|(op, l)| format!("{op}{l}")));
    }
    out
}

/// Keep (' '), remove ('-') and add ('+') operations turning `a` into `b`
/// along a longest common subsequence of lines.
fn line_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    // Common head and tail first: most revisions change a few lines.
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut ops: Vec<(char, &str)> = a[..head].iter().map(|l| (' ', *l)).collect();
    if am.len().saturating_mul(bm.len()) > 4_000_000 {
        // Too big to align: show the middle as replaced.
        ops.extend(am.iter().map(|l| ('-', *l)));
        ops.extend(bm.iter().map(|l| ('+', *l)));
    } else {
        let (n, m) = (am.len(), bm.len());
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        let idx = |i: usize, j: usize| i * (m + 1) + j;
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[idx(i, j)] = if am[i] == bm[j] {
                    lcs[idx(i + 1, j + 1)] + 1
                } else {
                    lcs[idx(i + 1, j)].max(lcs[idx(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push((' ', am[i]));
                i += 1;
                j += 1;
            } else if j == m || (i < n && lcs[idx(i + 1, j)] >= lcs[idx(i, j + 1)]) {
                ops.push(('-', am[i]));
                i += 1;
            } else {
                ops.push(('+', bm[j]));
                j += 1;
            }
        }
    }
    ops.extend(a[a.len() - tail..].iter().map(|l| (' ', *l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::unified_diff;

    #[test]
    fn a_changed_line_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified_diff(old, new, 2),
            vec!["@@ -3,5 +3,5 @@", " c", " d", "-e", "+E", " f", " g"]
        );
        assert!(unified_diff(old, old, 3).is_empty());
    }

    #[test]
    fn additions_removals_and_separate_hunks() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "0\n1\n2\n3\n4\n5\n6\n7\n8\n10\n";
        assert_eq!(
            unified_diff(old, new, 1),
            vec![
                "@@ -1,1 +1,2 @@",
                "+0",
                " 1",
                "@@ -8,3 +9,2 @@",
                " 8",
                "-9",
                " 10"
            ]
        );
        // First text empty: everything added.
        assert_eq!(
            unified_diff("", "x\ny\n", 3),
            vec!["@@ -0,0 +1,2 @@", "+x", "+y"]
        );
    }
}
