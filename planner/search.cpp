// PGSAM as implemented here (the header says what it is for):
//
//   Moves. A move is a pair (dimension d, sign sgn); it changes index d by sgn x step, step drawn
//   uniformly from 1..max_step and clamped to the dimension's bounds. Moves that would leave the
//   point unchanged (a dimension of size 1, or at its bound in that direction) are not offered.
//   Proposal probability of an offered move m:
//       P(m) = (1 - momentum) / |offered| + momentum x w(m) / sum of w over the offered moves
//   (uniform alone while w is all zero), with w the momentum weights: after every accepted move
//   a, w <- momentum x w + (1 - momentum) x onehot(a). Moves that paid off recently are proposed
//   more often; the uniform share keeps every move possible.
//
//   Score. s(p) = scalar_score(objectives, objective, reference) for a feasible point; an
//   infeasible one scores kInfeasible x (1 + violation): any feasible point beats any infeasible
//   one and a smaller violation beats a larger, so a walk that starts outside the feasible region
//   walks into it. For kBalanced the reference is the best time and the best energy of the
//   feasible points seen so far (the start point's own before any).
//
//   Acceptance (Metropolis). A proposal q from the current point p with delta = s(q) - s(p) is
//   accepted when delta <= 0, else with probability exp(-delta / (T_k x s_ref)), s_ref = s(start)
//   (so t0 is relative to the start's score; for an infeasible start s_ref is 1), and
//   T_k = t0 x cooling^k at proposal k.
//
//   Restarts. After `patience` proposals without an acceptance the walk restarts from a member of
//   the Pareto archive drawn uniformly (from the best point when the archive is empty), and the
//   momentum weights are cleared.
//
//   The archive takes every feasible point evaluated; evaluations are cached per point (a
//   revisit costs nothing and is not counted). The reported best is the archive member (or, with
//   none, nothing: found = false) of the lowest score, kBalanced re-scored against the final
//   archive's best time and best energy as exhaustive() does.
//
// Random numbers: std::mt19937_64 (its output sequence is fixed by the standard) with our own
// draws from its raw 64-bit outputs, since std::uniform_*_distribution differs between standard
// libraries: the same seed gives the same search everywhere.
//
// Bad input: an empty space, a size < 1 or a start point of the wrong length or out of range
// throws std::invalid_argument naming the dimension (a programming error of the caller; the
// planner builds its spaces itself).
#include "planner/search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <tuple>

namespace ramstream::planner {
namespace {

constexpr double kInfeasible = 1e30;

void check_space(const SearchSpace& space) {
  if (space.sizes.empty()) throw std::invalid_argument("search: the space has no dimension");
  for (size_t d = 0; d < space.sizes.size(); ++d) {
    if (space.sizes[d] < 1) {
      throw std::invalid_argument("search: dimension " + std::to_string(d) + " has size " +
                                  std::to_string(space.sizes[d]) + " (at least 1)");
    }
  }
}

// Uniform in [0, n) from raw 64-bit outputs (n < 2^32 here, so the modulo bias is below 2^-32).
int64_t draw_index(std::mt19937_64& rng, int64_t n) {
  return static_cast<int64_t>(rng() % static_cast<uint64_t>(n));
}

// Uniform in [0, 1) with 53 random bits.
double draw_unit(std::mt19937_64& rng) {
  return double(rng() >> 11) * (1.0 / 9007199254740992.0);
}

bool lexicographically_less(const Objectives& a, const Objectives& b) {
  return std::tie(a.time_s, a.energy_j, a.memory_bytes) <
         std::tie(b.time_s, b.energy_j, b.memory_bytes);
}

// Best member of the archive for `objective`, balanced scores against the archive's own best time
// and energy. Ties go to the lexicographic order of (time, energy, memory).
const ArchiveEntry* best_of(const std::vector<ArchiveEntry>& entries, Objective objective,
                            double* score) {
  Objectives ref{std::numeric_limits<double>::infinity(), std::numeric_limits<double>::infinity(),
                 0};
  for (const ArchiveEntry& e : entries) {
    ref.time_s = std::min(ref.time_s, e.obj.time_s);
    ref.energy_j = std::min(ref.energy_j, e.obj.energy_j);
    ref.memory_bytes = std::max(ref.memory_bytes, e.obj.memory_bytes);
  }
  const ArchiveEntry* best = nullptr;
  double best_score = 0;
  for (const ArchiveEntry& e : entries) {
    const double s = scalar_score(e.obj, objective, ref);
    if (!best || s < best_score || (s == best_score && lexicographically_less(e.obj, best->obj))) {
      best = &e;
      best_score = s;
    }
  }
  *score = best_score;
  return best;
}

// Fills the result's best and Pareto front from the archive.
void finish(const ParetoArchive& archive, Objective objective, SearchResult* r) {
  r->pareto = archive.entries();
  double score = 0;
  const ArchiveEntry* best = best_of(r->pareto, objective, &score);
  r->found = best != nullptr;
  if (best) {
    r->best = best->point;
    r->best_obj = best->obj;
    r->best_score = score;
  }
}

void note_infeasible(const Point& p, const Evaluation& e, SearchResult* r) {
  if (r->closest_infeasible.empty() || e.violation < r->closest_violation) {
    r->closest_infeasible = p;
    r->closest_violation = e.violation;
    r->closest_binding = e.binding;
  }
}

}  // namespace

int64_t SearchSpace::num_points() const {
  int64_t n = 1;
  for (int s : sizes) {
    if (s <= 0) return 0;
    if (n > std::numeric_limits<int64_t>::max() / s) return std::numeric_limits<int64_t>::max();
    n *= s;
  }
  return n;
}

bool parse_objective(const std::string& text, Objective* out) {
  if (text == "time") {
    *out = Objective::kTime;
  } else if (text == "energy") {
    *out = Objective::kEnergy;
  } else if (text == "balanced") {
    *out = Objective::kBalanced;
  } else {
    return false;
  }
  return true;
}

const char* objective_name(Objective objective) {
  switch (objective) {
    case Objective::kTime:
      return "time";
    case Objective::kEnergy:
      return "energy";
    case Objective::kBalanced:
      break;
  }
  return "balanced";
}

double scalar_score(const Objectives& obj, Objective objective, const Objectives& reference) {
  // Memory breaks ties only: 1e-9 of the score per reference's worth of bytes.
  const double memory = 1e-9 * obj.memory_bytes / std::max(1.0, reference.memory_bytes);
  switch (objective) {
    case Objective::kTime:
      return obj.time_s * (1 + memory);
    case Objective::kEnergy:
      return obj.energy_j * (1 + memory);
    case Objective::kBalanced:
      break;
  }
  const double t = reference.time_s > 0 ? obj.time_s / reference.time_s : obj.time_s;
  const double e = reference.energy_j > 0 ? obj.energy_j / reference.energy_j : obj.energy_j;
  return std::sqrt(std::max(0.0, t * e)) * (1 + memory);
}

bool dominates(const Objectives& a, const Objectives& b) {
  const bool no_worse =
      a.time_s <= b.time_s && a.energy_j <= b.energy_j && a.memory_bytes <= b.memory_bytes;
  const bool better =
      a.time_s < b.time_s || a.energy_j < b.energy_j || a.memory_bytes < b.memory_bytes;
  return no_worse && better;
}

bool ParetoArchive::offer(const Point& point, const Objectives& obj) {
  for (const ArchiveEntry& e : entries_) {
    if (dominates(e.obj, obj)) return false;
    if (e.obj.time_s == obj.time_s && e.obj.energy_j == obj.energy_j &&
        e.obj.memory_bytes == obj.memory_bytes) {
      return false;
    }
  }
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const ArchiveEntry& e) { return dominates(obj, e.obj); }),
                 entries_.end());
  entries_.push_back({point, obj});
  return true;
}

std::vector<ArchiveEntry> ParetoArchive::entries() const {
  std::vector<ArchiveEntry> sorted = entries_;
  std::sort(sorted.begin(), sorted.end(), [](const ArchiveEntry& a, const ArchiveEntry& b) {
    return lexicographically_less(a.obj, b.obj);
  });
  return sorted;
}

SearchResult exhaustive(const SearchSpace& space, const EvalFn& eval, Objective objective) {
  check_space(space);
  SearchResult r;
  ParetoArchive archive;
  Point p(space.sizes.size(), 0);
  for (;;) {
    const Evaluation e = eval(p);
    ++r.evaluations;
    if (e.feasible) {
      archive.offer(p, e.obj);
    } else {
      note_infeasible(p, e, &r);
    }
    // Mixed-radix increment, the last dimension fastest.
    size_t d = p.size();
    while (d > 0) {
      --d;
      if (++p[d] < space.sizes[d]) break;
      p[d] = 0;
      if (d == 0) {
        finish(archive, objective, &r);
        return r;
      }
    }
  }
}

SearchResult pgsam(const SearchSpace& space, const EvalFn& eval, Objective objective,
                   const PgsamOptions& o) {
  check_space(space);
  const size_t dims = space.sizes.size();
  Point current = o.start;
  if (current.empty()) {
    for (int s : space.sizes) current.push_back(s / 2);
  }
  if (current.size() != dims) {
    throw std::invalid_argument("pgsam: the start point has " + std::to_string(current.size()) +
                                " dimensions, the space " + std::to_string(dims));
  }
  for (size_t d = 0; d < dims; ++d) {
    if (current[d] < 0 || current[d] >= space.sizes[d]) {
      throw std::invalid_argument("pgsam: the start point's dimension " + std::to_string(d) +
                                  " is " + std::to_string(current[d]) + ", outside 0.." +
                                  std::to_string(space.sizes[d] - 1));
    }
  }
  std::mt19937_64 rng(o.seed);
  SearchResult r;
  ParetoArchive archive;
  std::map<Point, Evaluation> cache;
  Objectives ref{0, 0, 0};  // best feasible time and energy so far (kBalanced)
  bool have_ref = false;
  auto evaluate = [&](const Point& p) -> const Evaluation& {
    auto it = cache.find(p);
    if (it != cache.end()) return it->second;
    const Evaluation e = eval(p);
    ++r.evaluations;
    if (e.feasible) {
      archive.offer(p, e.obj);
      if (!have_ref) {
        ref = e.obj;
        have_ref = true;
      }
      ref.time_s = std::min(ref.time_s, e.obj.time_s);
      ref.energy_j = std::min(ref.energy_j, e.obj.energy_j);
      ref.memory_bytes = std::max(ref.memory_bytes, e.obj.memory_bytes);
    } else {
      note_infeasible(p, e, &r);
    }
    return cache.emplace(p, e).first->second;
  };
  auto score = [&](const Evaluation& e) {
    return e.feasible ? scalar_score(e.obj, objective, ref) : kInfeasible * (1 + e.violation);
  };

  double current_score = score(evaluate(current));
  const double s_ref = current_score > 0 && current_score < kInfeasible ? current_score : 1.0;
  const int max_step = std::max(1, o.max_step);
  std::vector<double> weight(2 * dims, 0.0);  // move 2d: d down, 2d + 1: d up
  std::vector<int> offered;
  std::vector<double> prob;
  int64_t since_accept = 0;
  double temperature = o.t0;
  for (int64_t k = 0; k < o.iterations; ++k, temperature *= o.cooling) {
    offered.clear();
    for (size_t d = 0; d < dims; ++d) {
      if (current[d] > 0) offered.push_back(int(2 * d));
      if (current[d] + 1 < space.sizes[d]) offered.push_back(int(2 * d + 1));
    }
    if (offered.empty()) break;  // a single-point space
    double wsum = 0;
    for (int m : offered) wsum += weight[size_t(m)];
    prob.assign(offered.size(), 0.0);
    for (size_t i = 0; i < offered.size(); ++i) {
      prob[i] = (1 - o.momentum) / double(offered.size()) +
                (wsum > 0 ? o.momentum * weight[size_t(offered[i])] / wsum
                          : o.momentum / double(offered.size()));
    }
    double u = draw_unit(rng), acc = 0;
    size_t pick = offered.size() - 1;
    for (size_t i = 0; i < offered.size(); ++i) {
      acc += prob[i];
      if (u < acc) {
        pick = i;
        break;
      }
    }
    const int move = offered[pick];
    const size_t d = size_t(move / 2);
    const int step = 1 + int(draw_index(rng, max_step));
    Point next = current;
    next[d] = std::clamp(current[d] + (move % 2 ? step : -step), 0, space.sizes[d] - 1);
    // Scores shift as the balanced reference improves: re-score the current point too.
    current_score = score(evaluate(current));
    const double next_score = score(evaluate(next));
    const double delta = next_score - current_score;
    const bool accept = delta <= 0 || (temperature > 0 &&
                                       draw_unit(rng) < std::exp(-delta / (temperature * s_ref)));
    if (accept) {
      current = next;
      current_score = next_score;
      for (double& w : weight) w *= o.momentum;
      weight[size_t(move)] += 1 - o.momentum;
      since_accept = 0;
    } else if (++since_accept >= o.patience) {
      const std::vector<ArchiveEntry> members = archive.entries();
      if (!members.empty()) {
        current = members[size_t(draw_index(rng, int64_t(members.size())))].point;
      } else if (!r.closest_infeasible.empty()) {
        current = r.closest_infeasible;
      }
      current_score = score(evaluate(current));
      std::fill(weight.begin(), weight.end(), 0.0);
      since_accept = 0;
    }
  }
  finish(archive, objective, &r);
  return r;
}

}  // namespace ramstream::planner
