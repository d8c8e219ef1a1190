//! Walking N strided operands over one contiguous output (broadcast binary ops, permute).
//!
//! The layout is first collapsed: size-1 axes are dropped and neighbouring axes merge wherever every
//! operand steps through them as through one axis. After that, most real cases are a single run
//! (same-shape operands), or rows whose innermost stride is 1 or 0 for each operand (`[T,D] + [D]`,
//! `[T,E,1] * [T,E,F]`, `[1,N] + [M,1]`, heads moved by a permute), which the callers turn into
//! tight slice loops. Only the outer offsets are computed per row, by mixed-radix decomposition of
//! the row number, which keeps rows independent so they can be spread over threads.

pub(crate) struct Strided<const N: usize> {
    /// Outer axes (outermost first) and each operand's stride along them.
    outer: Vec<(usize, [usize; N])>,
    /// Length of the innermost run.
    pub inner: usize,
    /// Each operand's stride along the innermost run.
    pub inner_strides: [usize; N],
}

impl<const N: usize> Strided<N> {
    /// `dims` is the output shape; `strides[k][i]` is operand k's stride (in elements) along axis i.
    pub fn new(dims: &[usize], strides: [&[usize]; N]) -> Self {
        // Built innermost first, then reversed.
        let mut axes: Vec<(usize, [usize; N])> = Vec::with_capacity(dims.len());
        for i in (0..dims.len()).rev() {
            if dims[i] == 1 {
                continue;
            }
            let s: [usize; N] = std::array::from_fn(|k| strides[k][i]);
            match axes.last_mut() {
                Some((d, inner)) if (0..N).all(|k| s[k] == inner[k] * *d) => *d *= dims[i],
                _ => axes.push((dims[i], s)),
            }
        }
        axes.reverse();
        let (inner, inner_strides) = axes.pop().unwrap_or((1, [0; N]));
        Strided { outer: axes, inner, inner_strides }
    }

    /// Number of innermost runs.
    pub fn rows(&self) -> usize {
        self.outer.iter().map(|(d, _)| d).product()
    }

    /// Each operand's offset at the start of run `row`.
    pub fn offsets(&self, mut row: usize) -> [usize; N] {
        let mut off = [0; N];
        for (d, s) in self.outer.iter().rev() {
            let digit = row % d;
            row /= d;
            for k in 0..N {
                off[k] += digit * s[k];
            }
        }
        off
    }
}
