//! Table tests for each cell of the conflict matrix, and a property test
//! that runs whole rounds of plans against a model of a peer and its hub.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

fn file(content: u8, exec: bool, mtime_ns: i128) -> State {
    State {
        kind: Kind::File,
        sha256: Some(Digest::repeat(content)),
        size: u64::from(content),
        exec,
        mtime_ns,
        inode: 1,
    }
}

fn dir() -> State {
    State {
        kind: Kind::Dir,
        sha256: None,
        size: 0,
        exec: false,
        mtime_ns: 0,
        inode: 1,
    }
}

fn synced(state: &State, version: u64) -> Synced {
    Synced {
        kind: state.kind,
        sha256: state.sha256,
        size: state.size,
        exec: state.exec,
        version,
        mtime_ns: state.mtime_ns,
        inode: state.inode,
    }
}

fn entry(path: &str, state: Option<&State>, version: u64) -> Entry {
    match state {
        Some(s) => synced(s, version).entry(path),
        None => Synced::deleted(version).entry(path),
    }
}

/// Plans one path: `local`, the hub's entry, the last-synced record.
fn one(local: Local, remote: Option<Entry>, base: Option<Synced>) -> Vec<Op> {
    let local = BTreeMap::from([("f".to_string(), local)]);
    let remote: BTreeMap<String, Entry> = remote.into_iter().map(|e| ("f".into(), e)).collect();
    let base: HashMap<String, Synced> = base.into_iter().map(|b| ("f".into(), b)).collect();
    plan(&local, &remote, &base)
}

#[test]
fn unchanged_on_both_sides_plans_nothing_and_a_touch_only_remembers() {
    let v1 = file(1, false, 10);
    assert_eq!(
        one(Local::Here(v1.clone()), None, Some(synced(&v1, 3))),
        vec![]
    );
    let news_we_have = entry("f", Some(&v1), 3);
    assert_eq!(
        one(
            Local::Here(v1.clone()),
            Some(news_we_have),
            Some(synced(&v1, 3))
        ),
        vec![]
    );
    let touched = file(1, false, 11);
    assert!(matches!(
        one(Local::Here(touched), None, Some(synced(&v1, 3)))[..],
        [Op::Remember { .. }]
    ));
}

#[test]
fn a_change_on_one_side_travels_to_the_other() {
    let (v1, v2) = (file(1, false, 10), file(2, false, 20));
    assert_eq!(
        one(Local::Here(v2.clone()), None, Some(synced(&v1, 3))),
        vec![Op::Upload {
            path: "f".into(),
            base: 3,
            state: v2.clone()
        }]
    );
    assert_eq!(
        one(Local::Absent, None, Some(synced(&v1, 3))),
        vec![Op::DeleteRemote {
            path: "f".into(),
            base: 3
        }]
    );
    let theirs = entry("f", Some(&v2), 7);
    assert_eq!(
        one(
            Local::Here(v1.clone()),
            Some(theirs.clone()),
            Some(synced(&v1, 3))
        ),
        vec![Op::Download {
            entry: theirs,
            expect: Some(v1.clone())
        }]
    );
    let gone = entry("f", None, 7);
    assert_eq!(
        one(Local::Here(v1.clone()), Some(gone), Some(synced(&v1, 3))),
        vec![Op::DeleteLocal {
            path: "f".into(),
            expect: v1,
            version: 7
        }]
    );
}

#[test]
fn edit_edit_keeps_the_local_side_as_a_conflict_copy() {
    let (v1, mine, theirs) = (file(1, false, 10), file(2, false, 20), file(3, false, 5));
    let theirs = entry("f", Some(&theirs), 7);
    assert_eq!(
        one(
            Local::Here(mine.clone()),
            Some(theirs.clone()),
            Some(synced(&v1, 3))
        ),
        vec![
            Op::KeepConflictCopy {
                path: "f".into(),
                expect: mine
            },
            Op::Download {
                entry: theirs,
                expect: None
            },
        ]
    );
}

#[test]
fn an_edit_beats_a_delete_on_either_side() {
    let (v1, v2) = (file(1, false, 10), file(2, false, 20));
    // Edited here, deleted there: push again on their tombstone.
    assert_eq!(
        one(
            Local::Here(v2.clone()),
            Some(entry("f", None, 7)),
            Some(synced(&v1, 3))
        ),
        vec![Op::Upload {
            path: "f".into(),
            base: 7,
            state: v2.clone()
        }]
    );
    // Deleted here, edited there: theirs comes back.
    let theirs = entry("f", Some(&v2), 7);
    assert_eq!(
        one(Local::Absent, Some(theirs.clone()), Some(synced(&v1, 3))),
        vec![Op::Download {
            entry: theirs,
            expect: None
        }]
    );
}

#[test]
fn create_create_keeps_both_unless_they_are_the_same() {
    let (mine, theirs) = (file(2, false, 20), file(3, false, 5));
    let ops = one(
        Local::Here(mine.clone()),
        Some(entry("f", Some(&theirs), 7)),
        None,
    );
    assert!(matches!(
        ops[..],
        [Op::KeepConflictCopy { .. }, Op::Download { .. }]
    ));
    let same = file(2, false, 99);
    assert!(matches!(
        one(Local::Here(mine), Some(entry("f", Some(&same), 7)), None)[..],
        [Op::Remember { .. }]
    ));
}

#[test]
fn a_file_against_a_directory_keeps_both() {
    let ops = one(
        Local::Here(file(2, false, 20)),
        Some(entry("f", Some(&dir()), 7)),
        None,
    );
    assert!(matches!(
        ops[..],
        [Op::KeepConflictCopy { .. }, Op::MakeDir { .. }]
    ));
}

#[test]
fn an_exec_bit_travels_alone() {
    let (plain, exec) = (file(1, false, 10), file(1, true, 10));
    assert!(matches!(
        one(Local::Here(exec.clone()), None, Some(synced(&plain, 3)))[..],
        [Op::Upload { .. }]
    ));
    assert!(matches!(
        one(
            Local::Here(plain.clone()),
            Some(entry("f", Some(&exec), 7)),
            Some(synced(&plain, 3))
        )[..],
        [Op::SetExec { .. }]
    ));
}

#[test]
fn skipped_ignored_unreadable_and_refused_paths_are_never_written() {
    let v1 = file(1, false, 10);
    let news = entry("f", Some(&file(2, false, 0)), 7);
    assert_eq!(
        one(Local::Skipped, Some(news.clone()), Some(synced(&v1, 3))),
        vec![]
    );
    assert_eq!(
        one(Local::Ignored, None, Some(synced(&v1, 3))),
        vec![Op::Forget { path: "f".into() }]
    );
    assert_eq!(
        one(Local::Unreadable, Some(news), Some(synced(&v1, 3))),
        vec![Op::Wait {
            path: "f".into(),
            version: 7
        }]
    );
    let evil = BTreeMap::from([(
        "../etc".to_string(),
        entry("../etc", Some(&file(1, false, 0)), 7),
    )]);
    assert!(matches!(
        plan(&BTreeMap::new(), &evil, &HashMap::new())[..],
        [Op::Refuse { .. }]
    ));
}

#[test]
fn deletes_run_children_first_and_creates_parents_first() {
    let (d, f) = (dir(), file(1, false, 10));
    let base = HashMap::from([
        ("a".to_string(), synced(&d, 1)),
        ("a/b".to_string(), synced(&d, 2)),
        ("a/b/c".to_string(), synced(&f, 3)),
    ]);
    let local: BTreeMap<String, Local> = ["a", "a/b", "a/b/c", "n", "n/m"]
        .iter()
        .map(|p| (p.to_string(), Local::Absent))
        .chain([
            ("n".to_string(), Local::Here(d.clone())),
            ("n/m".to_string(), Local::Here(f.clone())),
        ])
        .collect();
    let ops = plan(&local, &BTreeMap::new(), &base);
    let order: Vec<&str> = ops.iter().map(Op::path).collect();
    assert_eq!(order, ["a/b/c", "a/b", "a", "n", "n/m"]);
}

#[test]
fn batches_carry_small_files_together_and_large_ones_alone() {
    let sizes = vec![10, 20, SMALL_FILE + 1, 5, 6];
    let out = batches(sizes, |n| *n);
    assert_eq!(out, vec![vec![10, 20], vec![SMALL_FILE + 1, 5, 6]]);
    assert_eq!(batches(vec![1u64; 4001], |n| *n).len(), 3);
}

// --- the model: a peer, its hub, and what they last agreed on

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { content: u8, exec: bool },
    Dir,
}

fn state_of(node: &Node, mtime_ns: i128) -> State {
    match node {
        Node::File { content, exec } => file(*content, *exec, mtime_ns),
        Node::Dir => State { mtime_ns, ..dir() },
    }
}

fn node_of(state: &State) -> Node {
    match state.kind {
        Kind::Dir => Node::Dir,
        _ => Node::File {
            content: state.size as u8,
            exec: state.exec,
        },
    }
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

fn has_children<V>(tree: &BTreeMap<String, V>, path: &str) -> bool {
    let prefix = format!("{path}/");
    tree.keys().any(|k| k.starts_with(&prefix))
}

#[derive(Debug, Clone)]
struct World {
    peer: BTreeMap<String, (Node, i128)>,
    hub: BTreeMap<String, Node>,
    journal: BTreeMap<String, (Option<Node>, u64)>,
    index: HashMap<String, Synced>,
    next_version: u64,
    clock: i128,
    copies: u32,
}

impl World {
    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn tick(&mut self) -> i128 {
        self.clock += 1;
        self.clock
    }

    /// The hub journals what changed in its folder, as its own scan does.
    fn hub_scan(&mut self) {
        for (path, node) in self.hub.clone() {
            if self.journal.get(&path).and_then(|(n, _)| n.as_ref()) != Some(&node) {
                let v = self.bump();
                self.journal.insert(path, (Some(node), v));
            }
        }
        for (path, (node, _)) in self.journal.clone() {
            if node.is_some() && !self.hub.contains_key(&path) {
                let v = self.bump();
                self.journal.insert(path, (None, v));
            }
        }
    }

    fn current(&self, path: &str) -> Option<Entry> {
        let (node, v) = self.journal.get(path)?;
        let state = node.as_ref().map(|n| state_of(n, 0));
        Some(entry(path, state.as_ref(), *v))
    }

    fn inputs(&self) -> (BTreeMap<String, Local>, BTreeMap<String, Entry>) {
        let remote: BTreeMap<String, Entry> = self
            .journal
            .keys()
            .filter_map(|p| self.current(p).map(|e| (p.clone(), e)))
            .collect();
        let mut local: BTreeMap<String, Local> = self
            .peer
            .iter()
            .map(|(p, (n, m))| (p.clone(), Local::Here(state_of(n, *m))))
            .collect();
        for path in self.index.keys().chain(remote.keys()) {
            local.entry(path.clone()).or_insert(Local::Absent);
        }
        (local, remote)
    }

    fn plan(&self) -> Vec<Op> {
        let (local, remote) = self.inputs();
        plan(&local, &remote, &self.index)
    }

    fn peer_holds(&self, path: &str, expect: Option<&State>) -> bool {
        match (self.peer.get(path), expect) {
            (None, None) => true,
            (Some((n, m)), Some(s)) => same_stat(&synced(&state_of(n, *m), 0), s),
            _ => false,
        }
    }

    /// Creates the missing directories above `path` on the peer, as
    /// `safe_parent` does; false when one of them is a file.
    fn peer_parents(&mut self, path: &str) -> bool {
        let Some(up) = parent(path) else { return true };
        if !self.peer_parents(up) {
            return false;
        }
        match self.peer.get(up) {
            Some((Node::Dir, _)) => true,
            Some(_) => false,
            None => {
                let m = self.tick();
                self.peer.insert(up.to_string(), (Node::Dir, m));
                true
            }
        }
    }

    fn hub_parents(&mut self, path: &str) -> bool {
        let Some(up) = parent(path) else { return true };
        if !self.hub_parents(up) {
            return false;
        }
        match self.hub.get(up) {
            Some(Node::Dir) => true,
            Some(_) => false,
            None => {
                self.hub.insert(up.to_string(), Node::Dir);
                true
            }
        }
    }

    /// The hub's side of a push: lands only on a matching base, and only
    /// replaces a directory that is empty.
    fn land_on_hub(&mut self, path: &str, base: u64, node: Option<Node>, mtime: i128) {
        if !accepts(self.current(path).as_ref(), base) {
            return;
        }
        match &node {
            None => {
                if has_children(&self.hub, path) {
                    return;
                }
                self.hub.remove(path);
            }
            Some(node) => {
                if !self.hub_parents(path)
                    || (self.hub.get(path) == Some(&Node::Dir)
                        && *node != Node::Dir
                        && has_children(&self.hub, path))
                {
                    return;
                }
                self.hub.insert(path.to_string(), node.clone());
            }
        }
        let v = self.bump();
        self.journal.insert(path.to_string(), (node.clone(), v));
        let state = node.map(|n| state_of(&n, mtime));
        let record = match &state {
            Some(s) => synced(s, v),
            None => Synced::deleted(v),
        };
        self.index.insert(path.to_string(), record);
    }

    fn land_here(&mut self, path: &str, node: Node, entry: &Entry) {
        if !self.peer_parents(path) {
            return;
        }
        match self.peer.get(path) {
            None => {}
            Some((Node::Dir, _)) if node == Node::Dir => {}
            // A file is never renamed over a directory, and make_dir
            // refuses a file in its way.
            Some((Node::Dir, _)) => return,
            Some(_) if node == Node::Dir => return,
            Some(_) => {}
        }
        let m = self.tick();
        self.peer.insert(path.to_string(), (node.clone(), m));
        self.index.insert(
            path.to_string(),
            synced_of(entry, Some(&state_of(&node, m))),
        );
    }

    fn apply(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::KeepConflictCopy { path, expect } => {
                    assert!(self.peer_holds(&path, Some(&expect)), "{path}");
                    self.copies += 1;
                    let copy = format!("{path}.conflict{}", self.copies);
                    let prefix = format!("{path}/");
                    let moved: Vec<String> = self
                        .peer
                        .keys()
                        .filter(|k| **k == path || k.starts_with(&prefix))
                        .cloned()
                        .collect();
                    for old in moved {
                        let value = self.peer.remove(&old).unwrap();
                        self.peer
                            .insert(format!("{copy}{}", &old[path.len()..]), value);
                    }
                    self.index.insert(path, Synced::deleted(0));
                }
                Op::DeleteRemote { path, base } => self.land_on_hub(&path, base, None, 0),
                Op::PushDir { path, base, state } | Op::Upload { path, base, state } => {
                    assert!(self.peer_holds(&path, Some(&state)), "{path}");
                    self.land_on_hub(&path, base, Some(node_of(&state)), state.mtime_ns)
                }
                Op::DeleteLocal {
                    path,
                    expect,
                    version,
                } => {
                    assert!(self.peer_holds(&path, Some(&expect)), "{path}");
                    if !has_children(&self.peer, &path) {
                        self.peer.remove(&path);
                        self.index.insert(path, Synced::deleted(version));
                    }
                }
                Op::MakeDir { entry } => {
                    let path = entry.path.clone();
                    self.land_here(&path, Node::Dir, &entry);
                }
                Op::Download { entry, expect } => {
                    if !self.peer_holds(&entry.path, expect.as_ref()) {
                        continue;
                    }
                    // The hub sends what it has now, with its entry.
                    let Some(current) = self.current(&entry.path) else {
                        continue;
                    };
                    if let Some(node @ Node::File { .. }) = self.hub.get(&entry.path).cloned() {
                        self.land_here(&entry.path, node, &current);
                    }
                }
                Op::SetExec { entry, expect } => {
                    assert!(self.peer_holds(&entry.path, Some(&expect)));
                    let (node, m) = self.peer.get_mut(&entry.path).unwrap();
                    if let Node::File { exec, .. } = node {
                        *exec = entry.exec;
                    }
                    let state = state_of(node, *m);
                    self.index
                        .insert(entry.path.clone(), synced_of(&entry, Some(&state)));
                }
                Op::Remember { path, synced } => {
                    self.index.insert(path, synced);
                }
                Op::Forget { path } => {
                    self.index.remove(&path);
                }
                Op::Wait { .. } | Op::Refuse { .. } => {}
            }
        }
        self.hub_scan();
    }

    fn peer_nodes(&self) -> BTreeMap<String, Node> {
        self.peer
            .iter()
            .map(|(p, (n, _))| (p.clone(), n.clone()))
            .collect()
    }
}

const PATHS: [&str; 7] = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a"];

/// What one side did to a path since the last sync.
#[derive(Debug, Clone)]
enum Change {
    Keep,
    Touch,
    Delete,
    MakeDir,
    /// Write content shared by both sides' choices, so that both sides
    /// sometimes make the same edit.
    Write(u8),
    FlipExec,
    /// Write what another path held: with a delete there, a rename.
    CopyOf(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => Just(Change::Keep),
        1 => Just(Change::Touch),
        2 => Just(Change::Delete),
        1 => Just(Change::MakeDir),
        2 => (0u8..3).prop_map(Change::Write),
        1 => Just(Change::FlipExec),
        1 => (0..PATHS.len()).prop_map(Change::CopyOf),
    ]
}

fn base_node() -> impl Strategy<Value = Option<bool>> {
    // None: nothing; Some(true): a directory; Some(false): a file.
    prop_oneof![1 => Just(None), 1 => Just(Some(true)), 2 => Just(Some(false))]
}

/// Keeps only nodes whose parent is a directory, creating missing parents.
fn normalize(tree: BTreeMap<String, Node>) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    for (path, node) in tree {
        let mut ok = true;
        for up in ancestors(&path) {
            match out.get(up) {
                Some(Node::Dir) => {}
                Some(_) => {
                    ok = false;
                    break;
                }
                None => {
                    out.insert(up.to_string(), Node::Dir);
                }
            }
        }
        if ok && !(matches!(node, Node::File { .. }) && has_children(&out, &path)) {
            out.insert(path, node);
        }
    }
    out
}

fn changed(base: &BTreeMap<String, Node>, changes: &[Change]) -> BTreeMap<String, Node> {
    let mut out = base.clone();
    for (i, change) in changes.iter().enumerate() {
        let path = PATHS[i].to_string();
        match change {
            Change::Keep | Change::Touch => {}
            Change::Delete => {
                let prefix = format!("{path}/");
                out.retain(|k, _| *k != path && !k.starts_with(&prefix));
            }
            Change::MakeDir => {
                out.entry(path).or_insert(Node::Dir);
            }
            Change::Write(c) => {
                out.insert(
                    path,
                    Node::File {
                        content: 10 + c,
                        exec: false,
                    },
                );
            }
            Change::FlipExec => {
                if let Some(Node::File { exec, .. }) = out.get_mut(&path) {
                    *exec = !*exec;
                }
            }
            Change::CopyOf(j) => {
                if let Some(node @ Node::File { .. }) = base.get(PATHS[*j]) {
                    out.insert(path, node.clone());
                }
            }
        }
    }
    normalize(out)
}

fn world(
    base: &[Option<bool>],
    exec: &[bool],
    mine: &[Change],
    theirs: &[Change],
) -> (World, BTreeMap<String, Node>, BTreeMap<String, Node>) {
    let mut tree = BTreeMap::new();
    for (i, node) in base.iter().enumerate() {
        match node {
            Some(true) => {
                tree.insert(PATHS[i].to_string(), Node::Dir);
            }
            Some(false) => {
                tree.insert(
                    PATHS[i].to_string(),
                    Node::File {
                        content: 50 + i as u8,
                        exec: exec[i],
                    },
                );
            }
            None => {}
        }
    }
    let base = normalize(tree);
    let mut w = World {
        peer: BTreeMap::new(),
        hub: base.clone(),
        journal: BTreeMap::new(),
        index: HashMap::new(),
        next_version: 0,
        clock: 1000,
        copies: 0,
    };
    for (path, node) in &base {
        let v = w.bump();
        w.journal.insert(path.clone(), (Some(node.clone()), v));
        w.index.insert(path.clone(), synced(&state_of(node, 1), v));
    }
    let peer = changed(&base, mine);
    let hub = changed(&base, theirs);
    for (path, node) in &peer {
        let i = PATHS.iter().position(|p| p == path).unwrap();
        let untouched = base.get(path) == Some(node) && !matches!(mine[i], Change::Touch);
        let m = if untouched { 1 } else { w.tick() };
        w.peer.insert(path.clone(), (node.clone(), m));
    }
    w.hub = hub.clone();
    w.hub_scan();
    (w, peer, hub)
}

/// Runs rounds until a plan has nothing to do; panics if that never comes.
fn converge(w: &mut World) {
    for _ in 0..8 {
        let ops = w.plan();
        if ops.is_empty() {
            return;
        }
        w.apply(ops);
    }
    panic!("no convergence: {w:#?}\nnext plan: {:#?}", w.plan());
}

fn contents(tree: &BTreeMap<String, Node>) -> Vec<u8> {
    tree.values()
        .filter_map(|n| match n {
            Node::File { content, .. } => Some(*content),
            Node::Dir => None,
        })
        .collect()
}

fn without_stat(ops: Vec<Op>) -> Vec<Op> {
    let clear = |s: &mut State| {
        s.mtime_ns = 0;
        s.inode = 0;
    };
    ops.into_iter()
        .filter(|op| !matches!(op, Op::Remember { .. }))
        .map(|mut op| {
            match &mut op {
                Op::KeepConflictCopy { expect: s, .. }
                | Op::PushDir { state: s, .. }
                | Op::Upload { state: s, .. }
                | Op::DeleteLocal { expect: s, .. }
                | Op::SetExec { expect: s, .. }
                | Op::Download {
                    expect: Some(s), ..
                } => clear(s),
                _ => {}
            }
            op
        })
        .collect()
}

proptest! {
    // Failures print their minimal input; nothing is written beside the crate.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(4000)
    })]

    #[test]
    fn rounds_converge_keep_every_edit_and_then_plan_nothing(
        base in proptest::collection::vec(base_node(), PATHS.len()),
        exec in proptest::collection::vec(any::<bool>(), PATHS.len()),
        mine in proptest::collection::vec(change(), PATHS.len()),
        theirs in proptest::collection::vec(change(), PATHS.len()),
        mtimes in proptest::collection::vec(0i128..5, PATHS.len()),
    ) {
        let (mut w, peer, hub) = world(&base, &exec, &mine, &theirs);
        let base_tree: BTreeMap<String, Node> = w
            .index
            .iter()
            .map(|(p, s)| (p.clone(), if s.kind == Kind::Dir { Node::Dir } else {
                Node::File { content: s.size as u8, exec: s.exec }
            }))
            .collect();

        // mtime never picks a winner: other stat data, the same decisions.
        let (local, remote) = w.inputs();
        let shuffled: BTreeMap<String, Local> = local
            .iter()
            .enumerate()
            .map(|(i, (p, l))| {
                let l = match l {
                    Local::Here(s) => Local::Here(State { mtime_ns: -mtimes[i % mtimes.len()] - 7, ..s.clone() }),
                    other => other.clone(),
                };
                (p.clone(), l)
            })
            .collect();
        prop_assert_eq!(
            without_stat(plan(&local, &remote, &w.index)),
            without_stat(plan(&shuffled, &remote, &w.index))
        );

        converge(&mut w);
        prop_assert_eq!(w.peer_nodes(), w.hub.clone(), "the replicas converge");
        prop_assert!(w.plan().is_empty(), "a converged state plans nothing");

        // No bytes lost: whatever either side wrote is somewhere.
        let after = contents(&w.hub);
        for side in [&peer, &hub] {
            for (path, node) in side.iter() {
                if let Node::File { content, .. } = node
                    && base_tree.get(path) != Some(node)
                {
                    prop_assert!(after.contains(content), "{path}: {content} lost");
                }
            }
        }

        // An edit beats a delete, and keeps its name.
        for path in PATHS {
            let was = base_tree.get(path);
            for (editor, deleter) in [(&peer, &hub), (&hub, &peer)] {
                if let (Some(Node::File { .. }), Some(edit @ Node::File { .. })) = (was, editor.get(path))
                    && editor.get(path) != was
                    && !deleter.contains_key(path)
                    && parent(path).is_none_or(|up| deleter.get(up) == Some(&Node::Dir))
                {
                    prop_assert_eq!(w.hub.get(path), Some(edit), "{}", path);
                }
            }
        }
    }

    #[test]
    fn identical_sides_plan_nothing_but_records(
        base in proptest::collection::vec(base_node(), PATHS.len()),
        exec in proptest::collection::vec(any::<bool>(), PATHS.len()),
        mine in proptest::collection::vec(change(), PATHS.len()),
    ) {
        let (mut w, peer, _) = world(&base, &exec, &mine, &mine);
        prop_assert_eq!(w.peer_nodes(), peer.clone());
        prop_assert_eq!(w.hub.clone(), peer);
        let ops = w.plan();
        prop_assert!(
            ops.iter().all(|op| matches!(op, Op::Remember { .. })),
            "{:#?}", ops
        );
        w.apply(ops);
        prop_assert!(w.plan().is_empty());
    }
}
