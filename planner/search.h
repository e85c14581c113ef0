// Multi-objective search over a discrete decision space: an exhaustive sweep (the check, for small
// spaces) and PGSAM, Pareto-guided simulated annealing with momentum (for large ones). Both see the
// space only through an evaluation callback, so the cost model (planner/cost_model.h) and the
// synthetic test landscapes share them.
//
// A point is one index per dimension (dimension d takes values 0..sizes[d]-1; what an index means
// is the caller's business). An evaluation gives three objectives to minimise (time, energy,
// memory) and feasibility; an infeasible point carries how far it is over its binding limit
// (`violation`, > 0) and that limit's name.
//
// PGSAM, as defined here (the formulas are in search.cpp's header comment):
//   - state: a point; a move changes one dimension by a step of +-1..+-max_step, the dimension
//     and the direction drawn with probabilities biased towards the moves accepted recently
//     (momentum: an exponential average of accepted moves per dimension and sign);
//   - acceptance: Metropolis on the scalar score of the chosen objective, with a geometric
//     temperature schedule T_k = t0 * cooling^k; infeasible points score by their violation;
//   - a Pareto archive of every feasible non-dominated point seen (time, energy, memory);
//   - restarts from a random archive member when no move was accepted for `patience` steps.
// Same seed and options, same result.
//
//   SearchSpace space{{8, 6, 4}};
//   auto eval = [&](const Point& p) { return model.evaluate(decode(p)); };
//   SearchResult best = pgsam(space, eval, Objective::kTime, PgsamOptions{.seed = 7});
//   SearchResult check = exhaustive(space, eval, Objective::kTime);
//   // best.best_score is within 2% of check.best_score on the planner's spaces (tested)
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ramstream::planner {

using Point = std::vector<int>;

struct SearchSpace {
  std::vector<int> sizes;      // values per dimension, each >= 1
  int64_t num_points() const;  // product of sizes (saturates at INT64_MAX)
};

struct Objectives {
  double time_s = 0;
  double energy_j = 0;
  double memory_bytes = 0;
};

struct Evaluation {
  bool feasible = true;
  Objectives obj;
  double violation = 0;  // infeasible: how far over the binding limit, relative (> 0)
  std::string binding;   // infeasible: the limit that binds, e.g. "host RAM"
};

using EvalFn = std::function<Evaluation(const Point&)>;

enum class Objective { kTime, kEnergy, kBalanced };
// "time" | "energy" | "balanced"; false for anything else.
bool parse_objective(const std::string& text, Objective* out);
const char* objective_name(Objective objective);

// The scalar that a search minimises: time_s, energy_j, or for kBalanced the geometric mean of
// time and energy relative to `reference` (sqrt(t / t_ref * e / e_ref)), memory as a tie-breaker
// only (1e-9 relative weight). Lower is better.
double scalar_score(const Objectives& obj, Objective objective, const Objectives& reference);

// true when a is no worse than b in every objective and better in at least one.
bool dominates(const Objectives& a, const Objectives& b);

struct ArchiveEntry {
  Point point;
  Objectives obj;
};

// The non-dominated feasible points seen so far; a point equal in all objectives to a member is
// not added twice. Ordered by time_s ascending (then energy, memory) when read.
class ParetoArchive {
 public:
  // true when the point entered the archive (it removed every member it dominates).
  bool offer(const Point& point, const Objectives& obj);
  std::vector<ArchiveEntry> entries() const;  // sorted as above
  size_t size() const { return entries_.size(); }

 private:
  std::vector<ArchiveEntry> entries_;
};

struct SearchResult {
  bool found = false;  // some feasible point was seen
  Point best;          // lowest scalar_score among the feasible points seen
  Objectives best_obj;
  double best_score = 0;
  std::vector<ArchiveEntry> pareto;  // the archive, sorted
  int64_t evaluations = 0;           // calls of the callback (cached repeats not counted)
  // No feasible point: the point with the smallest violation and its binding limit.
  Point closest_infeasible;
  double closest_violation = 0;
  std::string closest_binding;
};

// Every point; `reference` of kBalanced is the best time and best energy over feasible points.
SearchResult exhaustive(const SearchSpace& space, const EvalFn& eval, Objective objective);

struct PgsamOptions {
  uint64_t seed = 1;
  int64_t iterations = 2000;  // proposals (evaluations of new points are cached per point)
  double t0 = 0.3;            // initial temperature, relative to the start point's score
  double cooling = 0.997;     // T_k = t0 * cooling^k
  double momentum = 0.8;      // weight of past accepted moves in the proposal distribution
  int max_step = 2;           // a move changes one index by 1..max_step
  int64_t patience = 200;     // proposals without an acceptance before a restart
  Point start;                // empty: the middle of every dimension
};

// Seeded and reproducible. `reference` of kBalanced: the best time and energy in the archive
// at the end (the reported best is re-scored against it, as exhaustive does).
SearchResult pgsam(const SearchSpace& space, const EvalFn& eval, Objective objective,
                   const PgsamOptions& options = {});

}  // namespace ramstream::planner
