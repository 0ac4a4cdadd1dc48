//! The synthetic course-enrollment data set of go-crablet's
//! `/load-test-data`: courses, students and enrollments, as events.
//!
//! Generated here, deterministically (a fixed-seed generator), in the sizes
//! go-crablet's scripts ask for: `tiny` (5 courses, 10 students, 20
//! enrollments) and `small` (1,000, 10,000 and 50,000). Event types and tags
//! follow go-crablet's data set: `CourseDefined` (`course_id:`, `category:`),
//! `StudentRegistered` (`student_id:`, `major:`, `year:`) and
//! `StudentEnrolledInCourse` (`student_id:`, `course_id:`, and `grade:` when
//! graded). This module only builds events; appending them is the caller's.

use serde_json::json;

use crate::dcb::NewEvent;

/// How many of each entity a named size holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub name: &'static str,
    pub courses: usize,
    pub students: usize,
    pub enrollments: usize,
}

/// The sizes go-crablet offered.
pub const SIZES: [Size; 2] = [
    Size {
        name: "tiny",
        courses: 5,
        students: 10,
        enrollments: 20,
    },
    Size {
        name: "small",
        courses: 1_000,
        students: 10_000,
        enrollments: 50_000,
    },
];

/// The size called `name`.
pub fn size(name: &str) -> Option<Size> {
    SIZES.iter().copied().find(|s| s.name == name)
}

const SUBJECTS: [&str; 8] = [
    "Computer Science",
    "Mathematics",
    "Physics",
    "Biology",
    "History",
    "Economics",
    "Music",
    "Engineering",
];
const GRADES: [&str; 6] = ["A", "B", "C", "D", "F", ""];

/// splitmix64: a small deterministic generator, so every load of a size
/// writes the same events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn event(event_type: &str, tags: Vec<String>, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: event_type.into(),
        tags,
        data: data.to_string(),
        id: None,
        metadata: None,
    }
}

/// Every event of the data set: courses, then students, then enrollments.
pub fn events(size: Size) -> Vec<NewEvent> {
    let mut rng = Rng(0x6372_6162_6c65_7421);
    let mut out = Vec::with_capacity(size.courses + size.students + size.enrollments);
    for i in 0..size.courses {
        let id = format!("course{i}");
        let category = SUBJECTS[rng.below(SUBJECTS.len())];
        let capacity = 20 + rng.below(81);
        out.push(event(
            "CourseDefined",
            vec![format!("course_id:{id}"), format!("category:{category}")],
            json!({"courseId": id, "name": format!("{category} {i}"), "capacity": capacity, "category": category}),
        ));
    }
    for i in 0..size.students {
        let id = format!("student{i}");
        let major = SUBJECTS[rng.below(SUBJECTS.len())];
        let year = 1 + rng.below(4);
        out.push(event(
            "StudentRegistered",
            vec![
                format!("student_id:{id}"),
                format!("major:{major}"),
                format!("year:{year}"),
            ],
            json!({"studentId": id, "name": format!("Student {i}"), "major": major, "year": year}),
        ));
    }
    for _ in 0..size.enrollments {
        let student = format!("student{}", rng.below(size.students));
        let course = format!("course{}", rng.below(size.courses));
        let grade = GRADES[rng.below(GRADES.len())];
        let mut tags = vec![
            format!("student_id:{student}"),
            format!("course_id:{course}"),
        ];
        if !grade.is_empty() {
            tags.push(format!("grade:{grade}"));
        }
        out.push(event(
            "StudentEnrolledInCourse",
            tags,
            json!({"studentId": student, "courseId": course, "grade": grade}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_has_its_counts_and_loads_the_same_events_each_time() {
        for s in SIZES {
            let a = events(s);
            assert_eq!(a.len(), s.courses + s.students + s.enrollments);
            assert_eq!(a, events(s));
        }
        assert_eq!(size("tiny").map(|s| s.courses), Some(5));
        assert_eq!(size("huge"), None);
    }
}
