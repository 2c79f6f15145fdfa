// Internals shared by the CUDA search translation units (nvcc only): csrc/cuda/kernels.cu holds the
// canonical kernels (every score in the canonical order: the reference and the fallback), and
// csrc/cuda/search_filter.cu the filter → certificate → canonical refinement built on cuBLAS.
#pragma once
#include <cstdint>
#include <vector>

#include "s4g/cuda_api.h"
#include "s4g/cuda_util.cuh"

namespace s4g::cuda::detail {

// Canonical top-k / ranks over all pairs (kernels.cu).
void topk_canonical(const Search& s, int64_t k, const int64_t* host_exclude, int64_t m, float* out_s, int64_t* out_i);
void ranks_canonical(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m, int64_t* out);

// Canonical scores of the pairs (dq[t], dr[t]) (device id arrays), t < pairs.
void pair_scores(const Search& s, const int64_t* dq, const int64_t* dr, int64_t pairs, float* dst);
// dev_pos[q] = canonical score of (q, host_positive[q]).
void positive_scores(const Search& s, const int64_t* host_positive, float* dev_pos);
// dev_counts[q] = #{r : canonical s(q, r) > dev_pos[q]} over all references (canonical scan).
void count_above_canonical(const Search& s, const float* dev_pos, unsigned long long* dev_counts);
// Subtract the ignored ids counted above the positive from the host counts hc, write out (device).
void finish_ranks(const Search& s, const int64_t* host_positive, const int64_t* host_ignore, int64_t m,
                  const float* dev_pos, std::vector<unsigned long long>& hc, int64_t* out);
// Sorted, de-duplicated valid ids per row (−1 and drop[q] removed), uploaded (ids: nq×m, counts: nq).
void upload_id_lists(const int64_t* host, int64_t nq, int64_t m, const int64_t* drop, Buf& ids, Buf& counts,
                     std::vector<int64_t>* host_ids = nullptr, std::vector<int64_t>* host_cnt = nullptr);

}  // namespace s4g::cuda::detail
