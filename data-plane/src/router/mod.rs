//! Model routing: complexity analysis, constraints, tiers, weighted splits, fallbacks. (Being built.)
