//! Scan paths: the order in which a selective scan visits the positions of a grid.
//!
//! A grid is the spatial part of a tensor laid out row-major (last axis fastest), with
//! 1 to 3 axes. A [`ScanPath`] lists the grid axes from slowest to fastest, may reverse
//! any axis, may alternate the direction of the fastest axis on every line (snake /
//! boustrophedon), may reverse the whole sequence, and may walk only a strided sub-grid
//! (`scale`, for multi-scale scans). Paths never move data: the scan kernels map step `t`
//! of a path to a canonical grid position and read and write through that map.
//!
//! Views: SRMA-Mamba presents a volume `(h, w, d)` to a 2D scanner as an `h × (w·d)`
//! image. A view is a grouping of consecutive-in-order grid axes; a 2D path over a view is
//! a 3D axis order ([`ScanPath::over_view`]), so views need no special kernel support.

use crate::error::{Error, Result};

/// How one scan walks the grid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScanPath {
    order: Vec<usize>,
    flip: Vec<bool>,
    snake: bool,
    reversed: bool,
    scale: usize,
}

impl ScanPath {
    /// Row-major over a grid of `rank` axes: axis 0 slowest, last axis fastest.
    pub fn raster(rank: usize) -> ScanPath {
        ScanPath {
            order: (0..rank).collect(),
            flip: vec![false; rank],
            snake: false,
            reversed: false,
            scale: 1,
        }
    }

    /// Visit axes in `order` (slowest → fastest), a permutation of `0..rank`.
    pub fn with_order(order: &[usize]) -> Result<ScanPath> {
        let rank = order.len();
        let mut seen = vec![false; rank];
        if rank == 0
            || rank > 3
            || order
                .iter()
                .any(|&a| a >= rank || std::mem::replace(&mut seen[a], true))
        {
            return Err(Error::arg(
                "scan path",
                format!("{order:?} is not a permutation of 0..n with 1 <= n <= 3"),
            ));
        }
        Ok(ScanPath {
            order: order.to_vec(),
            ..ScanPath::raster(rank)
        })
    }

    /// The same path walked backwards (step t becomes step L − 1 − t).
    pub fn rev(&self) -> ScanPath {
        ScanPath {
            reversed: !self.reversed,
            ..self.clone()
        }
    }

    /// Reverse the direction of one grid axis.
    pub fn flip_axis(&self, axis: usize) -> Result<ScanPath> {
        if axis >= self.rank() {
            return Err(Error::arg(
                "scan path",
                format!(
                    "axis {axis} is out of range for a rank-{} grid",
                    self.rank()
                ),
            ));
        }
        let mut p = self.clone();
        p.flip[axis] = !p.flip[axis];
        Ok(p)
    }

    /// Alternate the direction of the fastest axis on every line (boustrophedon).
    pub fn snake(&self) -> ScanPath {
        ScanPath {
            snake: true,
            ..self.clone()
        }
    }

    /// Walk only positions whose every coordinate is a multiple of `scale`.
    pub fn with_scale(&self, scale: usize) -> Result<ScanPath> {
        if scale == 0 {
            return Err(Error::arg("scan path", "scale must be at least 1"));
        }
        Ok(ScanPath {
            scale,
            ..self.clone()
        })
    }

    /// A 2D path over a view of a 3D grid: `view` groups the grid axes into a row axis and a
    /// column axis (each group listed slowest → fastest, e.g. `[[0], [1, 2]]` for
    /// `h × (w·d)`); `col_major` walks columns first (the view's transpose).
    pub fn over_view(view: [&[usize]; 2], col_major: bool) -> Result<ScanPath> {
        let (first, second) = if col_major {
            (view[1], view[0])
        } else {
            (view[0], view[1])
        };
        let order: Vec<usize> = first.iter().chain(second).copied().collect();
        ScanPath::with_order(&order)
    }

    /// Number of grid axes.
    pub fn rank(&self) -> usize {
        self.order.len()
    }

    /// Axis order, slowest → fastest.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Sub-grid stride.
    pub fn scale(&self) -> usize {
        self.scale
    }

    /// Number of positions the path visits on `grid`.
    pub fn len(&self, grid: &[usize]) -> usize {
        grid.iter().map(|&g| g.div_ceil(self.scale)).product()
    }

    /// Whether the path visits nothing on `grid`.
    pub fn is_empty(&self, grid: &[usize]) -> bool {
        self.len(grid) == 0
    }

    /// Check that the path fits a grid.
    pub fn check(&self, grid: &[usize]) -> Result<()> {
        if grid.len() != self.rank() {
            return Err(Error::shape(
                "scan path",
                format!(
                    "path over {} axes applied to a grid of rank {} ({grid:?})",
                    self.rank(),
                    grid.len()
                ),
            ));
        }
        Ok(())
    }

    /// Canonical (row-major) grid index of every step, in step order. The host reference
    /// and the kernels' index map agree by construction of [`PathMeta`].
    pub fn positions(&self, grid: &[usize]) -> Result<Vec<usize>> {
        self.check(grid)?;
        let meta = PathMeta::new(self, grid);
        Ok((0..meta.len).map(|t| meta.position(t)).collect())
    }
}

/// Number of `u32` words [`PathMeta::words`] produces per path.
pub const PATH_WORDS: usize = 12;

/// A path compiled against a grid: three (size, canonical stride, flip) triples in path
/// order (padded with size-1 axes), plus flags. This is exactly what the kernels read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMeta {
    /// Sizes of the path's axes, slowest → fastest (padded to 3 with 1).
    pub size: [usize; 3],
    /// Canonical stride of each path axis (already multiplied by the scale).
    pub stride: [usize; 3],
    /// Whether each path axis runs backwards.
    pub flip: [bool; 3],
    /// Boustrophedon on the fastest axis.
    pub snake: bool,
    /// Whole-sequence reversal.
    pub reversed: bool,
    /// Number of steps.
    pub len: usize,
}

impl PathMeta {
    /// Compile `path` against `grid` (the caller checked the rank).
    pub fn new(path: &ScanPath, grid: &[usize]) -> PathMeta {
        let rank = grid.len();
        let mut canon = vec![1usize; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            canon[d] = canon[d + 1] * grid[d + 1];
        }
        let pad = 3 - rank;
        let mut size = [1usize; 3];
        let mut stride = [0usize; 3];
        let mut flip = [false; 3];
        for (i, &ax) in path.order.iter().enumerate() {
            size[pad + i] = grid[ax].div_ceil(path.scale);
            stride[pad + i] = canon[ax] * path.scale;
            // A flipped axis of a strided sub-grid starts at its last sub-grid position.
            flip[pad + i] = path.flip[ax];
        }
        PathMeta {
            size,
            stride,
            flip,
            snake: path.snake,
            reversed: path.reversed,
            len: size.iter().product(),
        }
    }

    /// Canonical index of step `t` (host replica of the kernel's index map).
    pub fn position(&self, t: usize) -> usize {
        let t = if self.reversed { self.len - 1 - t } else { t };
        let mut c = [
            t / (self.size[1] * self.size[2]),
            (t / self.size[2]) % self.size[1],
            t % self.size[2],
        ];
        if self.snake && (c[0] * self.size[1] + c[1]) % 2 == 1 {
            c[2] = self.size[2] - 1 - c[2];
        }
        (0..3)
            .map(|j| {
                let cj = if self.flip[j] {
                    self.size[j] - 1 - c[j]
                } else {
                    c[j]
                };
                cj * self.stride[j]
            })
            .sum()
    }

    /// The kernel encoding: `size[3]`, `stride[3]`, flip bits, snake, reversed, len, padding.
    pub fn words(&self) -> [u32; PATH_WORDS] {
        let flips = self
            .flip
            .iter()
            .enumerate()
            .map(|(j, &f)| (f as u32) << j)
            .sum::<u32>();
        [
            self.size[0] as u32,
            self.size[1] as u32,
            self.size[2] as u32,
            self.stride[0] as u32,
            self.stride[1] as u32,
            self.stride[2] as u32,
            flips,
            self.snake as u32,
            self.reversed as u32,
            self.len as u32,
            0,
            0,
        ]
    }
}

/// Named sets of paths.
pub mod presets {
    use super::ScanPath;

    /// One path over a 1D sequence, first to last.
    pub fn forward_1d() -> Vec<ScanPath> {
        vec![ScanPath::raster(1)]
    }

    /// Two paths over a 1D sequence: first → last, then last → first (Vim).
    pub fn bidirectional() -> Vec<ScanPath> {
        vec![ScanPath::raster(1), ScanPath::raster(1).rev()]
    }

    /// VMamba's cross2d over an `H × W` grid, in VMamba's order: (0) row-major (rows top
    /// to bottom, each row left to right), (1) column-major (columns left to right, each
    /// column top to bottom), (2) the reverse of (0), (3) the reverse of (1).
    pub fn cross2d() -> Vec<ScanPath> {
        let row = ScanPath::raster(2);
        let col = ScanPath::with_order(&[1, 0]).expect("valid order");
        vec![row.clone(), col.clone(), row.rev(), col.rev()]
    }

    /// cross2d over a 2D view of a 3D grid (see [`ScanPath::over_view`]).
    pub fn cross2d_view(view: [&[usize]; 2]) -> Vec<ScanPath> {
        let row = ScanPath::over_view(view, false).expect("valid view");
        let col = ScanPath::over_view(view, true).expect("valid view");
        vec![row.clone(), col.clone(), row.rev(), col.rev()]
    }

    /// SegMamba's tri-orientated scan over a `(d, h, w)` volume (`d` = slice axis):
    /// (0) forward raster d → h → w (w fastest), (1) the reverse of (0), (2) inter-slice:
    /// for each in-plane position (h, w) in raster order, walk the slices d (d fastest).
    pub fn tri_orientated() -> Vec<ScanPath> {
        let fwd = ScanPath::raster(3);
        vec![
            fwd.clone(),
            fwd.rev(),
            ScanPath::with_order(&[1, 2, 0]).expect("valid order"),
        ]
    }

    /// SRMA-Mamba's ABSS over an `(h, w, d)` volume: three views `h × (w·d)`, `w × (h·d)`,
    /// `d × (h·w)`, with cross2d in each, in that order (12 paths). As 3D axis orders,
    /// slowest → fastest: (h,w,d), (w,d,h), rev, rev; (w,h,d), (h,d,w), rev, rev;
    /// (d,h,w), (h,w,d), rev, rev.
    pub fn srma_abss() -> Vec<ScanPath> {
        let mut paths = cross2d_view([&[0], &[1, 2]]);
        paths.extend(cross2d_view([&[1], &[0, 2]]));
        paths.extend(cross2d_view([&[2], &[0, 1]]));
        paths
    }

    /// All six axis orders of a 3D grid, each forward and reversed (12 paths): for each
    /// order in (0,1,2), (0,2,1), (1,0,2), (1,2,0), (2,0,1), (2,1,0) the forward path then
    /// its reverse.
    pub fn six_orders_3d() -> Vec<ScanPath> {
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        orders
            .iter()
            .flat_map(|o| {
                let p = ScanPath::with_order(o).expect("valid order");
                [p.clone(), p.rev()]
            })
            .collect()
    }

    /// Snake over an `H × W` grid: row 0 left → right, row 1 right → left, and so on.
    pub fn snake_2d() -> Vec<ScanPath> {
        vec![ScanPath::raster(2).snake()]
    }
}
