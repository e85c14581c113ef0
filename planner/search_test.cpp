// The search on synthetic landscapes: the Pareto archive, the scores, the exhaustive sweep, and
// PGSAM against the exhaustive optimum (within 2% for each objective over 20 seeds) on spaces
// shaped like the planner's, with a memory limit making part of each infeasible.
#include "planner/search.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include <gtest/gtest.h>

namespace ramstream::planner {
namespace {

TEST(ParetoArchive, KeepsOnlyNonDominatedPointsOnceSortedByTime) {
  ParetoArchive a;
  EXPECT_TRUE(a.offer({0}, {2, 2, 2}));
  EXPECT_FALSE(a.offer({1}, {3, 3, 3}));   // dominated
  EXPECT_FALSE(a.offer({2}, {2, 2, 2}));   // equal: not twice
  EXPECT_TRUE(a.offer({3}, {1, 5, 2}));    // a trade-off
  EXPECT_TRUE(a.offer({4}, {1.5, 1, 1}));  // dominates {2,2,2}
  const std::vector<ArchiveEntry> e = a.entries();
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].point, Point{3});
  EXPECT_EQ(e[1].point, Point{4});
  for (size_t i = 0; i < e.size(); ++i) {
    for (size_t j = 0; j < e.size(); ++j) EXPECT_FALSE(dominates(e[i].obj, e[j].obj));
  }
}

TEST(Search, ScoresAndDomination) {
  const Objectives ref{2, 10, 100};
  EXPECT_NEAR(scalar_score({3, 7, 0}, Objective::kTime, ref), 3, 1e-12);
  EXPECT_NEAR(scalar_score({3, 7, 0}, Objective::kEnergy, ref), 7, 1e-12);
  EXPECT_NEAR(scalar_score({4, 40, 0}, Objective::kBalanced, ref), std::sqrt(2.0 * 4.0), 1e-12);
  // Memory breaks ties only.
  EXPECT_LT(scalar_score({3, 7, 10}, Objective::kTime, ref),
            scalar_score({3, 7, 50}, Objective::kTime, ref));
  EXPECT_LT(scalar_score({3, 7, 100}, Objective::kTime, ref),
            scalar_score({3.0001, 7, 0}, Objective::kTime, ref));
  EXPECT_TRUE(dominates({1, 1, 1}, {1, 2, 1}));
  EXPECT_FALSE(dominates({1, 1, 1}, {1, 1, 1}));
  EXPECT_FALSE(dominates({1, 3, 1}, {2, 2, 1}));
  Objective o;
  EXPECT_TRUE(parse_objective("balanced", &o));
  EXPECT_EQ(o, Objective::kBalanced);
  EXPECT_FALSE(parse_objective("speed", &o));
  EXPECT_STREQ(objective_name(Objective::kEnergy), "energy");
}

// A landscape shaped like a planner space: a non-convex time with interactions and a
// deterministic ripple, an energy with another optimum, memory growing in some dimensions and a
// limit that makes part of the space infeasible.
struct Landscape {
  SearchSpace space;
  double memory_limit;
  int64_t calls = 0;

  static double ripple(const Point& p) {
    uint64_t h = 1469598103934665603ull;
    for (int x : p) h = (h ^ uint64_t(x + 1)) * 1099511628211ull;
    return double(h % 1000) / 1000.0;  // 0..1
  }
  Evaluation operator()(const Point& p) {
    ++calls;
    const double x0 = p[0], x1 = p[1], x2 = p[2], x3 = p.size() > 3 ? p[3] : 0;
    const double x4 = p.size() > 4 ? p[4] : 0;
    Evaluation e;
    e.obj.time_s = 10 / (x0 + 1) + 0.8 * x1 + 1.5 * std::fabs(x2 - 3) + 0.3 * x0 * x3 / (x1 + 1) +
                   (x4 > 0 ? 0.7 : 0) + 0.2 * ripple(p);
    e.obj.energy_j = 3 * e.obj.time_s + 4 * x0 + 2 * std::fabs(x3 - 1) + 0.4 * ripple(p);
    e.obj.memory_bytes = 100 * (x0 + 1) * (x2 + 1) + 50 * x3;
    if (e.obj.memory_bytes > memory_limit) {
      e.feasible = false;
      e.violation = e.obj.memory_bytes / memory_limit - 1;
      e.binding = "host RAM";
    }
    return e;
  }
};

TEST(Search, ExhaustiveFindsTheMinimumAndEveryPoint) {
  Landscape l{{{6, 4, 5}}, 1500};
  const SearchResult r = exhaustive(l.space, std::ref(l), Objective::kTime);
  EXPECT_EQ(r.evaluations, 120);
  ASSERT_TRUE(r.found);
  double best = 1e30;
  for (int a = 0; a < 6; ++a) {
    for (int b = 0; b < 4; ++b) {
      for (int c = 0; c < 5; ++c) {
        const Evaluation e = l({a, b, c});
        if (e.feasible) best = std::min(best, e.obj.time_s);
      }
    }
  }
  EXPECT_NEAR(r.best_obj.time_s, best, 1e-12);
  EXPECT_LE(r.best_obj.memory_bytes, 1500);
}

TEST(Search, NothingFeasibleGivesTheClosestPointAndItsLimit) {
  Landscape l{{{4, 3, 3}}, 10};  // below every point's memory
  for (bool annealed : {false, true}) {
    const SearchResult r = annealed ? pgsam(l.space, std::ref(l), Objective::kTime)
                                    : exhaustive(l.space, std::ref(l), Objective::kTime);
    EXPECT_FALSE(r.found);
    EXPECT_TRUE(r.pareto.empty());
    EXPECT_EQ(r.closest_binding, "host RAM");
    // The least memory: x0 = 0, x2 = 0 (x3 absent): 100 bytes, 9x over.
    EXPECT_EQ(r.closest_infeasible, (Point{0, 0, 0}));
    EXPECT_NEAR(r.closest_violation, 9, 1e-12);
  }
}

TEST(Search, PgsamReachesTheExhaustiveOptimumWithin2PercentOver20Seeds) {
  const std::vector<Landscape> landscapes = {Landscape{{{8, 6, 5, 4, 2}}, 2600},
                                             Landscape{{{10, 10, 10, 10}}, 4000}};
  for (const Landscape& base : landscapes) {
    for (Objective objective : {Objective::kTime, Objective::kEnergy, Objective::kBalanced}) {
      Landscape l = base;
      const SearchResult best = exhaustive(l.space, std::ref(l), objective);
      ASSERT_TRUE(best.found);
      // Balanced scores depend on the reference: score both against the exhaustive front's.
      Objectives ref{1e30, 1e30, 0};
      for (const ArchiveEntry& e : best.pareto) {
        ref.time_s = std::min(ref.time_s, e.obj.time_s);
        ref.energy_j = std::min(ref.energy_j, e.obj.energy_j);
        ref.memory_bytes = std::max(ref.memory_bytes, e.obj.memory_bytes);
      }
      const double optimum = scalar_score(best.best_obj, objective, ref);
      double worst = 0, evaluations = 0;
      for (uint64_t seed = 1; seed <= 20; ++seed) {
        Landscape walk = base;
        PgsamOptions o;
        o.seed = seed;
        const SearchResult r = pgsam(walk.space, std::ref(walk), objective, o);
        ASSERT_TRUE(r.found);
        EXPECT_LE(r.best_obj.memory_bytes, base.memory_limit);
        EXPECT_EQ(r.evaluations, walk.calls);  // revisits come from the cache
        EXPECT_LT(r.evaluations, best.evaluations);
        const double gap = scalar_score(r.best_obj, objective, ref) / optimum - 1;
        worst = std::max(worst, gap);
        evaluations += double(r.evaluations);
        EXPECT_LE(gap, 0.02) << objective_name(objective) << " seed " << seed;
      }
      std::printf("%lld points, %s: worst gap %.3f%% over 20 seeds, mean %.0f evaluations\n",
                  (long long)best.evaluations, objective_name(objective), 100 * worst,
                  evaluations / 20);
    }
  }
}

TEST(Search, SameSeedSameWalkOtherSeedsDiffer) {
  Landscape a{{{10, 10, 10, 10}}, 4000}, b = a;
  PgsamOptions o;
  o.seed = 7;
  const SearchResult r1 = pgsam(a.space, std::ref(a), Objective::kBalanced, o);
  const SearchResult r2 = pgsam(b.space, std::ref(b), Objective::kBalanced, o);
  EXPECT_EQ(r1.best, r2.best);
  EXPECT_EQ(r1.evaluations, r2.evaluations);
  EXPECT_EQ(r1.pareto.size(), r2.pareto.size());
  bool some_differ = false;
  for (uint64_t seed = 1; seed <= 20 && !some_differ; ++seed) {
    Landscape c{{{10, 10, 10, 10}}, 4000};
    o.seed = seed + 100;
    some_differ =
        pgsam(c.space, std::ref(c), Objective::kBalanced, o).evaluations != r1.evaluations;
  }
  EXPECT_TRUE(some_differ);
}

TEST(Search, WithoutMomentumItStillConverges) {
  Landscape l{{{8, 6, 5, 4, 2}}, 2600};
  const SearchResult best = exhaustive(l.space, std::ref(l), Objective::kTime);
  PgsamOptions o;
  o.momentum = 0;
  const SearchResult r = pgsam(l.space, std::ref(l), Objective::kTime, o);
  ASSERT_TRUE(r.found);
  EXPECT_LE(r.best_obj.time_s, best.best_obj.time_s * 1.02);
}

TEST(Search, BadSpacesAndStartPointsAreErrors) {
  Landscape l{{{4, 3, 3}}, 1e9};
  EXPECT_THROW(exhaustive({{}}, std::ref(l), Objective::kTime), std::invalid_argument);
  EXPECT_THROW(exhaustive({{4, 0, 3}}, std::ref(l), Objective::kTime), std::invalid_argument);
  PgsamOptions o;
  o.start = {1, 1};
  EXPECT_THROW(pgsam(l.space, std::ref(l), Objective::kTime, o), std::invalid_argument);
  o.start = {1, 5, 1};
  try {
    pgsam(l.space, std::ref(l), Objective::kTime, o);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("dimension 1"), std::string::npos) << e.what();
  }
  EXPECT_EQ((SearchSpace{{3, 0}}.num_points()), 0);
  EXPECT_EQ((SearchSpace{{3, 4}}.num_points()), 12);
}

}  // namespace
}  // namespace ramstream::planner
