//! The files of `gateway/src` import each other without a loop: every `use crate::…` points
//! down a layer. Read from the code's own `crate::` paths, file to file, as a reviewer would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file that holds module `crate::a::b…`, trying the longest path first.
fn module_file(src: &Path, segments: &[&str]) -> Option<PathBuf> {
    (1..=segments.len()).rev().find_map(|n| {
        let joined: PathBuf = segments[..n].iter().collect();
        [
            src.join(&joined).with_extension("rs"),
            src.join(&joined).join("mod.rs"),
        ]
        .into_iter()
        .find(|p| p.is_file())
    })
}

/// `crate::` paths named in a file (in `use` lines and inline), as segment lists.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segments: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

fn import_graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut graph = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Tests may reach anywhere; only the code's own structure counts.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let mut edges = BTreeSet::new();
        for path in crate_paths(code) {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            if let Some(target) = module_file(src, &segments)
                && &target != file
                && !target.ends_with("lib.rs")
            {
                edges.insert(target);
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// A cycle in `graph`, if there is one, as the files along it.
fn find_cycle(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        node: &PathBuf,
        graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        marks: &mut BTreeMap<PathBuf, Mark>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Visiting);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

#[test]
fn gateway_files_import_without_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = import_graph(&src);
    assert!(graph.len() > 30, "read {} files", graph.len());
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle
            .iter()
            .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
            .collect();
        panic!(
            "import loop: {}; make the lower file not import the higher one",
            names.join(" -> ")
        );
    }
}

#[test]
fn the_loop_finder_finds_loops() {
    let graph: BTreeMap<PathBuf, BTreeSet<PathBuf>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into_iter().map(PathBuf::from).collect()))
    .collect();
    let cycle = find_cycle(&graph).unwrap();
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
    let mut acyclic = graph.clone();
    acyclic.get_mut(Path::new("c")).unwrap().clear();
    assert_eq!(find_cycle(&acyclic), None);
}
