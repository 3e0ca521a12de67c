//! The expressions a bench submits, each with the answer it must get back.
//!
//! Expected answers come from evaluating each expression here, with the calculator the workers
//! run and its default limits: a wrong answer is an error, never a latency sample.

use std::path::Path;

use anyhow::{Context, Result, bail};
use dalc_calc::Limits;
use dalc_proto::v1::{Task, TaskStatus};

use super::report::{Outcome, WRONG_RESULT};

/// What the service must answer for an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// SUCCEEDED with exactly this `result` text.
    Value(String),
    /// Parses but does not evaluate (e.g. `1 / 0`): the task must end FAILED.
    Fails,
    /// Does not parse: the gateway must refuse it with INVALID_ARGUMENT.
    Rejected,
}

impl Expected {
    pub fn of(expression: &str) -> Expected {
        let limits = Limits::default();
        match dalc_calc::parse(expression, &limits) {
            Err(_) => Expected::Rejected,
            Ok(parsed) => match parsed.evaluate(&limits) {
                Ok(value) => Expected::Value(value.to_string()),
                Err(_) => Expected::Fails,
            },
        }
    }

    /// Checks a task that is over, or should be: anything but the expected terminal answer is
    /// an error, named by the task's status (or `wrong result` when it succeeded otherwise).
    pub fn check_task(&self, task: &Task) -> Outcome {
        let status = task.status();
        match (self, status) {
            (Expected::Value(value), TaskStatus::Succeeded) if task.result == *value => Outcome::Ok,
            (_, TaskStatus::Succeeded) => Outcome::Error(WRONG_RESULT.into()),
            (Expected::Fails, TaskStatus::Failed) => Outcome::Expected(status.as_str_name().into()),
            // Accepted although it should have been refused: the gateway and this check disagree.
            (Expected::Rejected, TaskStatus::Failed) => Outcome::Error(WRONG_RESULT.into()),
            // FAILED where a value was due, EXPIRED, CANCELLED, or not over within the wait.
            (_, other) => Outcome::Error(other.as_str_name().into()),
        }
    }

    /// Checks a call that the gateway refused.
    pub fn check_refusal(&self, status: &tonic::Status) -> Outcome {
        let code = code_name(status.code());
        match (self, status.code()) {
            (Expected::Rejected, tonic::Code::InvalidArgument) => Outcome::Expected(code),
            _ => Outcome::Error(code),
        }
    }

    /// Checks an accepted asynchronous submission: only its end tells whether it was right.
    pub fn check_accepted(&self) -> Outcome {
        match self {
            Expected::Rejected => Outcome::Error(WRONG_RESULT.into()),
            Expected::Value(_) | Expected::Fails => Outcome::Ok,
        }
    }
}

/// The gRPC code as tonic names it: `Unavailable`, `DeadlineExceeded`, …
pub fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// The expressions, in the order they are used (round-robin), with their answers.
#[derive(Debug, Clone)]
pub struct Mix {
    entries: Vec<(String, Expected)>,
}

impl Mix {
    /// From the expressions given on the command line and in a file; `1 + 1` when none.
    pub fn new(given: Vec<String>, file: Option<&Path>) -> Result<Mix> {
        let mut expressions = given;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the expression file {}", path.display()))?;
            let lines = parse_expression_file(&text);
            if lines.is_empty() {
                bail!("the expression file {} has no expression", path.display());
            }
            expressions.extend(lines);
        }
        if expressions.is_empty() {
            expressions.push("1 + 1".into());
        }
        let entries = expressions
            .into_iter()
            .map(|expression| {
                let expected = Expected::of(&expression);
                (expression, expected)
            })
            .collect();
        Ok(Mix { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The expression for call `seq` (round-robin).
    pub fn pick(&self, seq: u64) -> &(String, Expected) {
        // `entries` is never empty (`new` puts `1 + 1` in an empty mix).
        &self.entries[(seq % self.entries.len() as u64) as usize]
    }
}

/// One expression per line; `#` starts a comment (no expression contains one), blank lines
/// are skipped, surrounding spaces trimmed.
pub fn parse_expression_file(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task(status: TaskStatus, result: &str) -> Task {
        Task {
            status: status.into(),
            result: result.into(),
            ..Task::default()
        }
    }

    #[test]
    fn expression_files_skip_comments_and_blank_lines() {
        let text = "# a mix\n1 + 1\n\n   2^10   \n  # indented comment\nsqrt(2) # trailing\n";
        assert_eq!(
            parse_expression_file(text),
            vec!["1 + 1", "2^10", "sqrt(2)"]
        );
        assert!(parse_expression_file("# nothing\n\n").is_empty());
    }

    #[test]
    fn expected_answers_come_from_the_local_calculator() {
        assert_eq!(Expected::of("1 + 1"), Expected::Value("2".into()));
        assert_eq!(Expected::of("2^10"), Expected::Value("1024".into()));
        assert_eq!(Expected::of("1 / 0"), Expected::Fails);
        assert_eq!(Expected::of("1 +"), Expected::Rejected);
    }

    #[test]
    fn only_the_exact_result_is_ok() {
        let two = Expected::Value("2".into());
        assert_eq!(
            two.check_task(&task(TaskStatus::Succeeded, "2")),
            Outcome::Ok
        );
        assert_eq!(
            two.check_task(&task(TaskStatus::Succeeded, "2.0")),
            Outcome::Error(WRONG_RESULT.into())
        );
        assert_eq!(
            two.check_task(&task(TaskStatus::Failed, "")),
            Outcome::Error("TASK_STATUS_FAILED".into())
        );
        assert_eq!(
            two.check_task(&task(TaskStatus::Pending, "")),
            Outcome::Error("TASK_STATUS_PENDING".into())
        );
        assert_eq!(
            two.check_task(&task(TaskStatus::Expired, "")),
            Outcome::Error("TASK_STATUS_EXPIRED".into())
        );
    }

    #[test]
    fn failures_count_only_where_they_are_expected() {
        let fails = Expected::Fails;
        assert_eq!(
            fails.check_task(&task(TaskStatus::Failed, "")),
            Outcome::Expected("TASK_STATUS_FAILED".into())
        );
        assert_eq!(
            fails.check_task(&task(TaskStatus::Succeeded, "inf")),
            Outcome::Error(WRONG_RESULT.into())
        );
        let rejected = Expected::Rejected;
        let invalid = tonic::Status::invalid_argument("invalid expression");
        assert_eq!(
            rejected.check_refusal(&invalid),
            Outcome::Expected("InvalidArgument".into())
        );
        assert_eq!(
            Expected::Value("2".into()).check_refusal(&invalid),
            Outcome::Error("InvalidArgument".into())
        );
        assert_eq!(
            rejected.check_refusal(&tonic::Status::unavailable("down")),
            Outcome::Error("Unavailable".into())
        );
        assert_eq!(
            rejected.check_accepted(),
            Outcome::Error(WRONG_RESULT.into())
        );
        assert_eq!(fails.check_accepted(), Outcome::Ok);
    }

    #[test]
    fn a_mix_is_used_round_robin_and_defaults_to_one_plus_one() {
        let mix = Mix::new(vec![], None).unwrap();
        assert_eq!(mix.pick(7).0, "1 + 1");
        let mix = Mix::new(vec!["1".into(), "2".into(), "3".into()], None).unwrap();
        let picked: Vec<&str> = (0..5).map(|seq| mix.pick(seq).0.as_str()).collect();
        assert_eq!(picked, vec!["1", "2", "3", "1", "2"]);
        assert_eq!(mix.len(), 3);
    }
}
