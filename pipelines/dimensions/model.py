"""Dimension rows for the simulated lessons: lesson, classroom, teacher and student.

Identities (classroom_id, lesson_id, teacher and student user ids, platforms) are taken from
the simulator's own `Lesson` objects, built from the same (seed, index), so they can never drift
from what `generate_events` emits. The attributes the simulator has no notion of (course,
region, schedule, AV vendor line, grade) are drawn from a separate rng seeded by
`dim:<seed>:<index>`, which leaves the simulator's random streams untouched.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from pipelines.config import SimulatorConfig

REGIONS = ("us-east", "us-west", "eu-west", "eu-central", "ap-southeast", "ap-northeast",
           "sa-east")
# (course, scheduled minutes)
COURSES = (("english-conversation", 25), ("english-grammar", 25), ("math-foundations", 45),
           ("math-olympiad", 55), ("coding-scratch", 45), ("chinese-reading", 25))
# Media lines a classroom can be put on; the resolver's `switch_media_line` moves between them.
AV_VENDOR_LINES = ("vendor-a:line-1", "vendor-a:line-2", "vendor-b:line-1", "vendor-b:line-2",
                   "vendor-c:line-1")
# Identity only: no Help request is planned, so no rng draw after the identities matters.
_IDENTITY_CFG = SimulatorConfig(help_share=0.0)


@dataclass(frozen=True, slots=True)
class LessonRow:
    """One scheduled lesson: who teaches whom, what, where, when, on which media line."""

    lesson_id: str
    classroom_id: str
    teacher_id: str
    student_id: str
    course: str
    region: str
    scheduled_start: datetime
    scheduled_end: datetime
    av_vendor_line: str


@dataclass(frozen=True, slots=True)
class ClassroomRow:
    classroom_id: str
    region: str
    av_vendor_line: str
    seats: int


@dataclass(frozen=True, slots=True)
class TeacherRow:
    teacher_id: str
    home_region: str
    platform: str
    app_version: str
    team: str


@dataclass(frozen=True, slots=True)
class StudentRow:
    student_id: str
    home_region: str
    platform: str
    app_version: str
    team: str
    grade: int


_ARROW_TYPES = {str: pa.string(), datetime: pa.timestamp("us", tz="UTC"), int: pa.int32()}
_PG_TYPES = {str: "text", datetime: "timestamptz", int: "integer"}
_SPARK_TYPES = {str: "string", datetime: "timestamp", int: "int"}
_PY_TYPES = {"str": str, "datetime": datetime, "int": int}


@dataclass(frozen=True)
class TableSpec:
    """One dimension table: its name, key and row type; the schemas follow from the type."""

    name: str  # `dim.<name>` in Delta, `<schema>.<name>` in PostgreSQL
    key: str
    row_type: type

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self.row_type))

    def _types(self) -> list[tuple[str, type]]:
        return [(f.name, _PY_TYPES[str(f.type)]) for f in fields(self.row_type)]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, _ARROW_TYPES[t], nullable=n != self.key)
                          for n, t in self._types()])

    def spark_ddl(self) -> str:
        return ", ".join(f"{n} {_SPARK_TYPES[t]}" for n, t in self._types())

    def pg_columns(self) -> list[tuple[str, str]]:
        return [(n, _PG_TYPES[t]) for n, t in self._types()]

    def to_arrow(self, rows: Iterable[Any]) -> pa.Table:
        """Rows (of `row_type`) as an Arrow table with this table's schema."""
        columns = list(zip(*(astuple(r) for r in rows), strict=True)) or [()] * len(self.columns)
        return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in
                                     zip(columns, self.arrow_schema(), strict=True)],
                                    schema=self.arrow_schema())


LESSON = TableSpec("lesson", "lesson_id", LessonRow)
CLASSROOM = TableSpec("classroom", "classroom_id", ClassroomRow)
TEACHER = TableSpec("teacher", "teacher_id", TeacherRow)
STUDENT = TableSpec("student", "student_id", StudentRow)
TABLES = (LESSON, CLASSROOM, TEACHER, STUDENT)


@dataclass(frozen=True)
class DimensionRows:
    """The four dimensions of one simulated run, each unique by its key."""

    lessons: tuple[LessonRow, ...]
    classrooms: tuple[ClassroomRow, ...]
    teachers: tuple[TeacherRow, ...]
    students: tuple[StudentRow, ...]

    def tables(self) -> list[tuple[TableSpec, Sequence[Any]]]:
        return [(LESSON, self.lessons), (CLASSROOM, self.classrooms),
                (TEACHER, self.teachers), (STUDENT, self.students)]


def dimension_rows(*, seed: int, classrooms: int, start_ms: int) -> DimensionRows:
    """The dimensions of `run_simulation(classrooms=, seed=, start_ms=)`, deterministically.

    The simulator starts every lesson at simulated second 0, so `start_ms` is each lesson's
    scheduled start; its scheduled end follows from the course length.
    """
    # Imported here: the simulator's producer loop imports this package to publish dimensions.
    from pipelines.simulator.lesson import Lesson

    if classrooms < 0:
        raise ValueError("classrooms must be >= 0")
    start = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    lessons: dict[str, LessonRow] = {}
    rooms: dict[str, ClassroomRow] = {}
    teachers: dict[str, TeacherRow] = {}
    students: dict[str, StudentRow] = {}
    for index in range(classrooms):
        sim = Lesson(index, seed, _IDENTITY_CFG, 0, start_ms)
        rng = random.Random(f"dim:{seed}:{index}")
        course, minutes = COURSES[rng.randrange(len(COURSES))]
        region = REGIONS[rng.randrange(len(REGIONS))]  # media served near the student
        teacher_region = REGIONS[rng.randrange(len(REGIONS))]
        line = AV_VENDOR_LINES[rng.randrange(len(AV_VENDOR_LINES))]
        grade = 1 + rng.randrange(12)
        t, s = sim.teacher, sim.student
        lessons[sim.lesson_id] = LessonRow(
            lesson_id=sim.lesson_id, classroom_id=sim.classroom_id, teacher_id=t.user_id,
            student_id=s.user_id, course=course, region=region, scheduled_start=start,
            scheduled_end=start + timedelta(minutes=minutes), av_vendor_line=line)
        rooms[sim.classroom_id] = ClassroomRow(sim.classroom_id, region, line, seats=2)
        teachers[t.user_id] = TeacherRow(t.user_id, teacher_region, t.platform, t.app_version,
                                         t.team)
        students[s.user_id] = StudentRow(s.user_id, region, s.platform, s.app_version, s.team,
                                         grade)
    return DimensionRows(tuple(lessons.values()), tuple(rooms.values()),
                         tuple(teachers.values()), tuple(students.values()))
