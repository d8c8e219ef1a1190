//! Checks every collective of a communicator against the result computed locally: each rank builds
//! every rank's input (a function of the rank), so it knows what the group must return. Values are
//! small integers, exact in every float dtype, so sums compare exactly whatever the order.

use engine::comm::Communicator;
use engine::{DType, Device, Tensor};

/// Rank `r`'s input: `rows` x `width`, element (i, j) = 100·r + 10·i + j (mod 256 for 16-bit floats).
fn input(r: usize, rows: usize, width: usize) -> Vec<f64> {
    (0..rows * width).map(|k| ((100 * r + 10 * (k / width) + k % width) % 256) as f64).collect()
}

fn tensor(v: &[f64], rows: usize, width: usize, dtype: DType, device: &Device) -> Tensor {
    Tensor::from_f64s(v, [rows, width], dtype, device).unwrap()
}

/// `want` is exact; it is rounded once to `got`'s dtype (a bf16 sum above 256 is not exact in bf16,
/// and the group sums in f32 and rounds once).
fn assert_equal(what: &str, got: &Tensor, want: &[f64], dims: &[usize], rank: usize) {
    assert_eq!(got.dims(), dims, "rank {rank}: {what}: shape");
    let want = Tensor::from_f64s(want, [want.len()], got.dtype(), &Device::Cpu).unwrap().to_f64_vec().unwrap();
    assert_eq!(got.to_f64_vec().unwrap(), want, "rank {rank}: {what}: values");
}

pub fn check_collectives(c: &dyn Communicator, device: &Device) {
    let (rank, size) = (c.rank(), c.size());
    let (rows, width) = (2 * size, 3);
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::U32] {
        let what = |op: &str| format!("{op} {dtype}");
        let mine = tensor(&input(rank, rows, width), rows, width, dtype, device);
        let mut sum = vec![0.0; rows * width];
        for r in 0..size {
            for (s, x) in sum.iter_mut().zip(input(r, rows, width)) {
                *s += x;
            }
        }
        assert_equal(&what("all_reduce_sum"), &c.all_reduce_sum(&mine).unwrap(), &sum, &[rows, width], rank);
        // Started reductions: two in flight at once, polled, waited in order; each the right sum
        // (on NCCL, the reads below also check that the compute stream waits for the reduction).
        let twice = tensor(&input(rank, rows, width).iter().map(|v| 2.0 * v).collect::<Vec<_>>(), rows, width, dtype, device);
        let mut first = c.start_all_reduce_sum(&mine).unwrap();
        let second = c.start_all_reduce_sum(&twice).unwrap();
        first.poll().unwrap();
        assert_equal(&what("start_all_reduce_sum"), &first.wait().unwrap(), &sum, &[rows, width], rank);
        let doubled: Vec<f64> = sum.iter().map(|s| 2.0 * s).collect();
        assert_equal(&what("start_all_reduce_sum, second in flight"), &second.wait().unwrap(), &doubled, &[rows, width], rank);
        let block = rows / size * width;
        assert_equal(&what("reduce_scatter_sum"), &c.reduce_scatter_sum(&mine).unwrap(), &sum[rank * block..(rank + 1) * block], &[rows / size, width], rank);
        let gathered: Vec<f64> = (0..size).flat_map(|r| input(r, rows, width)).collect();
        assert_equal(&what("all_gather"), &c.all_gather(&mine).unwrap(), &gathered, &[rows * size, width], rank);
        let root = size - 1;
        assert_equal(&what("broadcast"), &c.broadcast(&mine, root).unwrap(), &input(root, rows, width), &[rows, width], rank);

        // all_to_all with uneven counts: rank r sends (r + q) % 3 rows to rank q, from its own
        // `sends` rows, whose values name (sender, row).
        let counts = |r: usize| -> Vec<usize> { (0..size).map(|q| (r + q) % 3).collect() };
        let sends = |r: usize| -> Vec<f64> {
            let n: usize = counts(r).iter().sum();
            (0..n * width).map(|k| ((50 * r + k) % 256) as f64).collect()
        };
        let mine_rows: usize = counts(rank).iter().sum();
        let x = tensor(&sends(rank), mine_rows, width, dtype, device);
        let (got, recv_rows) = c.all_to_all(&x, &counts(rank)).unwrap();
        let mut want = Vec::new();
        let mut want_rows = Vec::new();
        for q in 0..size {
            let offset: usize = counts(q)[..rank].iter().sum();
            let n = counts(q)[rank];
            want.extend_from_slice(&sends(q)[offset * width..(offset + n) * width]);
            want_rows.push(n);
        }
        assert_eq!(recv_rows, want_rows, "rank {rank}: all_to_all {dtype}: received row counts");
        assert_equal(&what("all_to_all"), &got, &want, &[want_rows.iter().sum(), width], rank);
    }
    c.barrier().unwrap();
    check_started_sum_bits(c, device);

    // Sub-groups: even and odd ranks, ordered by descending rank.
    let sub = c.split(rank % 2, size - rank).unwrap();
    let members: Vec<usize> = (0..size).filter(|r| r % 2 == rank % 2).collect();
    assert_eq!(sub.size(), members.len(), "rank {rank}: split size");
    assert_eq!(sub.rank(), members.iter().filter(|&&r| r > rank).count(), "rank {rank}: split rank (ordered by key)");
    let one = Tensor::from_f64s(&[rank as f64], [1], DType::F32, device).unwrap();
    let want: f64 = members.iter().map(|&r| r as f64).sum();
    assert_equal("split all_reduce_sum", &sub.all_reduce_sum(&one).unwrap(), &[want], &[1], rank);
}

/// On values that use every mantissa bit, a started all-reduce gives what `all_reduce_sum` gives:
/// bit for bit on up to two ranks (one addition per element, which commutes), within rounding on
/// more (the transport may order the additions differently). Long enough that MPI picks its
/// large-message algorithms.
fn check_started_sum_bits(c: &dyn Communicator, device: &Device) {
    let n = 300_001;
    let values: Vec<f64> = (0..n).map(|k| ((k as f64 * 0.618_033_988_7 + c.rank() as f64 * 0.414_213_562_3).fract() - 0.5) * 3.7).collect();
    let x = Tensor::from_f64s(&values, [n], DType::F32, device).unwrap();
    let blocking = c.all_reduce_sum(&x).unwrap().to_f64_vec().unwrap();
    let started = c.start_all_reduce_sum(&x).unwrap().wait().unwrap().to_f64_vec().unwrap();
    if c.size() <= 2 {
        let differ = blocking.iter().zip(&started).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(differ, 0, "rank {}: started and blocking all-reduce differ in {differ} of {n} elements", c.rank());
    } else {
        for (a, b) in blocking.iter().zip(&started) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "rank {}: started {b} vs blocking {a}", c.rank());
        }
    }
}
