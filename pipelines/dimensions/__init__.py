"""Lesson, classroom, teacher and student dimensions for silver enrichment.

- `model`: deterministic dimension rows for a simulated run (ids exactly as the simulator's).
- `store`: write them to Delta (`dim.*`) or PostgreSQL; `publish_dimensions` picks by conf.
- `enrich`: the stream-static Delta join (`read_lesson_dim`, `enrich_with_lessons`) and the
  PostgreSQL one (`enrich_via_lookup`); unknown lessons are kept and flagged, never dropped.
- `lookup`: `LessonLookup`, the batched, TTL-cached, retrying PostgreSQL lesson lookup.

Kept import-light (no Spark here) because the simulator imports `store`.
"""
