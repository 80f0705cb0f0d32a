//! The fuzz targets' stable smoke run, part of every `cargo test`: each target gets its
//! committed corpus (`fuzz/corpus/<target>/`, seeds and every regression input) and then
//! inputs made by mutating those seeds with a fixed-seed generator, so a run is repeatable.
//! The long, coverage-guided runs are `scripts/fuzz` (nightly, cargo-fuzz).

use std::fs;
use std::path::PathBuf;

/// Generated inputs per target on top of its corpus.
const GENERATED: usize = 3000;

/// A small fixed-seed generator (xorshift64*): repeatable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| fs::read(entry.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    inputs.sort();
    inputs
}

/// A seed changed in a few places: bytes flipped, inserted, removed, or spliced from
/// another seed (the edits that find most framing and quoting bugs).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(4) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                input.remove(at);
            }
            _ => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let len = rng.below(other.len() - from + 1);
                input.splice(at..at, other[from..from + len].iter().copied());
            }
        }
    }
    input
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    for (name, target) in fencegate_fuzz::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "{name}: no seeds in fuzz/corpus/{name}");
        for input in &seeds {
            target(input);
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for _ in 0..GENERATED {
            target(&mutate(&mut rng, &seeds));
        }
    }
}
