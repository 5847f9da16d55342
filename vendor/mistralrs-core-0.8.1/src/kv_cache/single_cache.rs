use candle_core::{Result, Tensor};

use super::NormalCache;

#[derive(Debug, Clone)]
pub struct SingleCache {
    // all_data is an option on a Tensor, this makes it possible to only create the actual tensor
    // on the first call where the batch size is easily known.
    // Also this makes it safe to clone a KvCache that has been reset (as in it will not share
    // its internal state with the cloned instance).
    pub all_data: Option<Tensor>,
    pub dim: usize,
    pub current_seq_len: usize,
    pub capacity_seq_len: usize,
    pub max_seq_len: usize,
    /// A batch of sequences of different lengths (see [`Self::append`]):
    /// how many positions each row holds, `current_seq_len` being the
    /// largest. `None` when every row holds `current_seq_len`.
    pub row_lens: Option<Vec<usize>>,
}

impl SingleCache {
    pub fn new(dim: usize, max_seq_len: usize, capacity_seq_len: usize) -> Self {
        Self {
            all_data: None,
            dim,
            current_seq_len: 0,
            max_seq_len,
            capacity_seq_len,
            row_lens: None,
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn current_seq_len(&self) -> usize {
        self.current_seq_len
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    pub fn all_data(&self) -> Option<&Tensor> {
        self.all_data.as_ref()
    }

    pub fn current_data(&self) -> Result<Option<Tensor>> {
        let data = match self.all_data.as_ref() {
            None => None,
            Some(d) => Some(d.narrow(self.dim, 0, self.current_seq_len)?),
        };
        Ok(data)
    }

    pub fn reset(&mut self) {
        self.current_seq_len = 0;
        self.all_data = None;
        self.row_lens = None;
    }

    /// How many positions each row holds, where the rows differ.
    pub fn row_lens(&self) -> Option<&[usize]> {
        self.row_lens.as_deref()
    }

    pub fn try_set_len(&self, len: usize) -> candle_core::Result<()> {
        if len > self.capacity_seq_len {
            candle_core::bail!(
                "kv-cache: requested length ({}) exceeds current capacity ({})",
                len,
                self.capacity_seq_len
            );
        }
        Ok(())
    }

    pub fn set_len(&mut self, len: usize) -> candle_core::Result<()> {
        self.try_set_len(len)?;
        self.current_seq_len = len;
        self.row_lens = None;
        Ok(())
    }

    pub fn append(&mut self, src: &Tensor) -> Result<()> {
        let seq_len = src.dim(self.dim)?;
        if self.row_lens.is_some() {
            return self.append_ragged(src);
        }
        // This doesn't seem very idiomatic but because the creation can fail, it's tricky to use
        // self.all_data.get_or_insert_with.
        if self.all_data.is_none() {
            let mut shape = src.dims().to_vec();
            shape[self.dim] = self.capacity_seq_len;
            let ad = Tensor::zeros(shape, src.dtype(), src.device())?;
            self.all_data = Some(ad);
        };

        // Expand kv cache
        if self.current_seq_len + seq_len > self.capacity_seq_len {
            let diff = self.current_seq_len + seq_len - self.capacity_seq_len;
            let n_blocks_needed = diff.div_ceil(NormalCache::CACHE_GROW_SIZE);
            self.capacity_seq_len += n_blocks_needed * NormalCache::CACHE_GROW_SIZE;
            if self.capacity_seq_len > self.max_seq_len {
                candle_core::bail!(
                    "kv-cache: requested capacity ({}) above max seq len ({})",
                    self.capacity_seq_len,
                    self.max_seq_len
                )
            }
            let mut shape = src.dims().to_vec();
            shape[self.dim] = self.capacity_seq_len;
            let ad = Tensor::zeros(shape, src.dtype(), src.device())?;
            ad.slice_set(self.all_data.as_ref().unwrap(), self.dim, 0)?;
            self.all_data = Some(ad);
        }

        let ad = self.all_data.as_mut().unwrap();

        ad.slice_set(src, self.dim, self.current_seq_len)?;
        self.current_seq_len += seq_len;
        Ok(())
    }

    /// Appends one position to each row of a batch whose rows hold
    /// different lengths (`row_lens`), each at its own end: a row's positions
    /// stay where they are when it runs alone, and what lies past a row's
    /// length is stale and must be masked by the caller. Only decoding (one
    /// new position per row) is batched this way.
    fn append_ragged(&mut self, src: &Tensor) -> Result<()> {
        let lens = self.row_lens.clone().expect("a ragged batch has row lengths");
        if src.dim(self.dim)? != 1 {
            candle_core::bail!(
                "kv-cache: a batch of sequences of different lengths only decodes one position at a time"
            )
        }
        let rows = src.dim(0)?;
        if rows != lens.len() {
            candle_core::bail!("kv-cache: {rows} rows appended to a batch of {}", lens.len())
        }
        let end = lens.iter().max().copied().unwrap_or(0) + 1;
        let ad = self.all_data.as_ref().expect("a ragged batch holds data");
        if end > self.capacity_seq_len {
            let n_blocks_needed = (end - self.capacity_seq_len).div_ceil(NormalCache::CACHE_GROW_SIZE);
            self.capacity_seq_len += n_blocks_needed * NormalCache::CACHE_GROW_SIZE;
            if self.capacity_seq_len > self.max_seq_len {
                candle_core::bail!(
                    "kv-cache: requested capacity ({}) above max seq len ({})",
                    self.capacity_seq_len,
                    self.max_seq_len
                )
            }
            let mut shape = ad.dims().to_vec();
            shape[self.dim] = self.capacity_seq_len;
            let grown = Tensor::zeros(shape, ad.dtype(), ad.device())?;
            grown.slice_set(ad, self.dim, 0)?;
            self.all_data = Some(grown);
        }
        let ad = self.all_data.as_ref().unwrap();
        for (row, &len) in lens.iter().enumerate() {
            ad.narrow(0, row, 1)?
                .slice_set(&src.narrow(0, row, 1)?.contiguous()?, self.dim, len)?;
        }
        self.row_lens = Some(lens.iter().map(|l| l + 1).collect());
        self.current_seq_len = end;
        Ok(())
    }
}
