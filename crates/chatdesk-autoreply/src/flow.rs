//! Scripted dialog flows: a bot builder declares, in one TOML file per flow, the questions to ask,
//! how each answer is checked and what happens once everything is collected. The engine is pure
//! (no I/O besides reading flow files at load, no async, no Redis): the caller keeps a
//! [`Progress`] per conversation (it is serde JSON, stored in Redis between messages), feeds each
//! customer message to [`Flow::answer`], sends the [`Turn`]'s replies and, when the turn carries
//! [`Completed`], performs the action itself and then sends [`Flow::finish_text`].
//!
//! # The file
//!
//! The flow's name is the file stem (`flows/order.toml` is the flow `order`), matching
//! `[a-z0-9][a-z0-9_-]{0,63}`. The shipped `flows/order.toml` documents every key in comments.
//!
//! ```toml
//! description = "Takes an order"           # optional, shown in the flow list
//! start = "address"                        # the first state
//! greeting = "Hi! I can take your order."  # optional, sent before the first prompt
//! restart_text = "Let's start over."       # optional, sent when a state goes to "restart"
//!
//! [states.address]                         # names: [a-z][a-z0-9_]{0,63}; not finish/restart
//! prompt = "What is the delivery address?"
//! expect = { kind = "length", min = 5, max = 200 }
//! save_as = "address"                      # optional field name: [a-z][a-z0-9_]{0,39}
//! retry = "An address is 5 to 200 characters long."  # optional; default: complaint + prompt
//! next = "confirm"                         # a state, "finish" or "restart"
//!
//! [states.confirm]
//! prompt = "Deliver to {{address}}?"
//! expect = { kind = "yes_no" }
//! buttons = true                           # yes_no and choice only
//! yes = "finish"
//! no = "restart"
//! restart_text = "No problem."             # optional; wins over the top-level one
//!
//! [finish]
//! action = "order"                         # "order", "webhook" (with url = "https://…") or "none"
//! text = "Your order {{order_id}} is placed."
//! ```
//!
//! `expect` kinds: `text` (any non-blank text), `length` (`min`, `max`: characters after trimming,
//! `0 < min <= max <= 4096`), `regex` (`pattern` must match the whole trimmed answer, optional
//! `message`), `phone` (international, saved as `+` and digits), `integer` (`min`, `max`, saved as
//! a JSON number), `yes_no` (saved as a JSON bool, goes on by `yes`/`no`) and `choice` (`options =
//! [{ id, title, next? }]`, saved as the option id; `next` on each option or once on the state).
//!
//! # Loading
//!
//! [`parse`] reads the file into a `toml::Value` and checks it by hand rather than through serde,
//! so that every problem of a file is reported at once, each with the file and its dotted key
//! ([`Problem`]); [`Flows::load_dir`] does the same across every file of a directory. A [`Flow`]
//! exists only once its file passed every check, so running it never meets a dangling target.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::path::Path;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;
use toml::{Table, Value as TomlValue};

/// The longest text a flow sends or accepts: the most every channel delivers as one message.
const MAX_TEXT_CHARS: usize = 4_096;
/// A WhatsApp list holds at most ten rows.
const MAX_CHOICE_OPTIONS: usize = 10;
/// The longest title a WhatsApp list row shows.
const MAX_OPTION_TITLE_CHARS: usize = 24;
/// Compiled-program limit for a builder's pattern: generous for any sane validation pattern, and
/// keeps a pathological one (`\w{1000}{1000}`) from taking memory at load.
const REGEX_SIZE_LIMIT_BYTES: usize = 64 * 1024;
/// The field the caller fills in `finish.text` with the id of the order it created.
const ORDER_ID_FIELD: &str = "order_id";
/// The targets every flow has besides its states.
const FINISH_TARGET: &str = "finish";
const RESTART_TARGET: &str = "restart";

const BUILTIN_ORDER_FILE: &str = "flows/order.toml";
const BUILTIN_ORDER_TEXT: &str = include_str!("../../../flows/order.toml");

const TOP_LEVEL_KEYS: &[&str] = &["description", "start", "greeting", "restart_text", "states", "finish"];
const STATE_KEYS: &[&str] = &["prompt", "expect", "save_as", "retry", "next", "yes", "no", "buttons", "restart_text"];
const FINISH_KEYS: &[&str] = &["action", "url", "text"];
const OPTION_KEYS: &[&str] = &["id", "title", "next"];

const YES_WORDS: &[&str] =
    &["yes", "y", "yeah", "yep", "sure", "ok", "okay", "correct", "right", "si", "sí", "oui", "ja"];
const NO_WORDS: &[&str] = &["no", "n", "nope", "nah", "wrong", "non", "nein"];

// ---------------------------------------------------------------------------------------------
// Problems

/// One problem in a flow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    /// The state the problem is in, when it is in one (also visible in `key`).
    pub state: Option<String>,
    /// Dotted path of the offending key, e.g. `states.phone.expect.min`; empty for problems of the
    /// whole file (unreadable, not TOML, bad file name).
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            return write!(formatter, "{}: {}", self.file, self.reason);
        }
        write!(formatter, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

/// Every problem found in one or more flow files.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_problems(.0))]
pub struct FlowErrors(pub Vec<Problem>);

fn render_problems(problems: &[Problem]) -> String {
    let count_line = match problems.len() {
        1 => "1 problem in flow files:".to_owned(),
        count => format!("{count} problems in flow files:"),
    };
    let mut rendered = count_line;
    for problem in problems {
        rendered.push('\n');
        rendered.push_str(&problem.to_string());
    }
    rendered
}

fn whole_file_problem(file: &str, reason: String) -> Problem {
    Problem { file: file.to_owned(), state: None, key: String::new(), reason }
}

// ---------------------------------------------------------------------------------------------
// Running

/// Where a conversation is in its flow. The caller stores it between messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
// A progress stored by an older build that lacked a field still loads.
#[serde(default)]
pub struct Progress {
    /// The state whose question awaits an answer; `None` before the flow began and after it
    /// finished.
    pub state: Option<String>,
    /// The fields collected so far, by `save_as` name.
    pub fields: BTreeMap<String, JsonValue>,
    /// Invalid answers in a row to the current question, so the caller can hand off to a human
    /// when a customer is stuck; back to 0 whenever the flow moves to another state.
    pub invalid_answers: u32,
}

/// One customer message, as the flow sees it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub text: &'a str,
    /// The id of a pressed button or list row, if the customer pressed one.
    pub choice_id: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Button {
    pub id: String,
    pub title: String,
}

/// One message to send; `buttons` is empty unless the state asked for buttons.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prompt {
    pub text: String,
    pub buttons: Vec<Button>,
}

impl Prompt {
    fn plain(text: String) -> Prompt {
        Prompt { text, buttons: Vec::new() }
    }
}

/// What the caller does with the collected fields when a flow finishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Insert an order row from the fields.
    Order,
    /// Post the fields to `url` (http or https).
    Webhook { url: String },
    /// Nothing: the flow only collects.
    None,
}

/// A finished flow: the caller runs `action`, then sends [`Flow::finish_text`].
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub fields: BTreeMap<String, JsonValue>,
    pub action: Action,
}

/// The outcome of one customer message: the progress to store, the messages to send in order,
/// and, when the flow finished, what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub progress: Progress,
    pub replies: Vec<Prompt>,
    pub completed: Option<Completed>,
}

/// A loaded flow; only [`parse`] builds one, so every target names an existing state.
#[derive(Debug, Clone)]
pub struct Flow {
    name: String,
    description: String,
    start: String,
    greeting: Option<String>,
    restart_text: Option<String>,
    states: BTreeMap<String, State>,
    finish: Finish,
}

#[derive(Debug, Clone)]
struct State {
    prompt: String,
    check: Check,
    save_as: Option<String>,
    retry: Option<String>,
    buttons: bool,
    restart_text: Option<String>,
}

/// How an answer is checked together with where it leads, in one type, so a yes_no state cannot
/// exist without its two targets nor a choice option without one.
#[derive(Debug, Clone)]
enum Check {
    Validated { validator: Validator, next: Target },
    YesNo { yes: Target, no: Target },
    Choice { options: Vec<ChoiceOption> },
}

#[derive(Debug, Clone)]
enum Validator {
    Text,
    Length { min_chars: usize, max_chars: usize },
    Pattern { regex: Regex, message: Option<String> },
    Phone,
    Integer { min: i64, max: i64 },
}

#[derive(Debug, Clone)]
struct ChoiceOption {
    id: String,
    title: String,
    /// The option's own `next`, or else the state's.
    next: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    State(String),
    Finish,
    Restart,
}

#[derive(Debug, Clone)]
struct Finish {
    action: Action,
    text: String,
}

impl Flow {
    /// The flow as listed: name, description, states in the order a customer meets them.
    pub fn summary(&self) -> FlowSummary {
        FlowSummary {
            name: self.name.clone(),
            description: self.description.clone(),
            states: self.state_names_in_order(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The first message of a conversation that has no progress: greeting (if any) + the start
    /// state's prompt (rendered, with buttons).
    pub fn begin(&self) -> Turn {
        let progress = Progress { state: Some(self.start.clone()), fields: BTreeMap::new(), invalid_answers: 0 };
        let mut replies = Vec::new();
        if let Some(greeting) = &self.greeting {
            replies.push(Prompt::plain(render(greeting, &progress.fields, None)));
        }
        replies.push(self.start_state().ask(&progress.fields));
        Turn { progress, replies, completed: None }
    }

    /// Advances by one customer answer. Progress with state None behaves like begin() (the
    /// message was a conversation opener, not an answer).
    pub fn answer(&self, progress: &Progress, answer: Answer<'_>) -> Turn {
        let Some(state_name) = progress.state.as_deref() else {
            return self.begin();
        };
        // Progress stored before the flow file changed may name a state that is gone; starting
        // over is better than a conversation stuck for good.
        let Some(state) = self.states.get(state_name) else {
            return self.begin();
        };
        let Some((value, target)) = state.judge(answer) else {
            let progress = Progress { invalid_answers: progress.invalid_answers.saturating_add(1), ..progress.clone() };
            let reply = state.retry_prompt(&progress.fields);
            return Turn { progress, replies: vec![reply], completed: None };
        };
        let mut fields = progress.fields.clone();
        if let Some(field) = &state.save_as {
            fields.insert(field.clone(), value);
        }
        match target {
            Target::State(next_name) => {
                let reply = self.states[next_name].ask(&fields);
                let progress = Progress { state: Some(next_name.clone()), fields, invalid_answers: 0 };
                Turn { progress, replies: vec![reply], completed: None }
            }
            Target::Restart => {
                let mut replies = Vec::new();
                if let Some(restart_text) = state.restart_text.as_ref().or(self.restart_text.as_ref()) {
                    // Rendered with what was collected, so it can say what is being thrown away.
                    replies.push(Prompt::plain(render(restart_text, &fields, None)));
                }
                let progress =
                    Progress { state: Some(self.start.clone()), fields: BTreeMap::new(), invalid_answers: 0 };
                replies.push(self.start_state().ask(&progress.fields));
                Turn { progress, replies, completed: None }
            }
            Target::Finish => Turn {
                progress: Progress::default(),
                replies: Vec::new(),
                completed: Some(Completed { fields, action: self.finish.action.clone() }),
            },
        }
    }

    /// The text to send after the caller ran the action: finish.text with {{order_id}} and the
    /// fields filled in.
    pub fn finish_text(&self, fields: &BTreeMap<String, JsonValue>, order_id: &str) -> String {
        render(&self.finish.text, fields, Some(order_id))
    }

    fn start_state(&self) -> &State {
        &self.states[&self.start]
    }

    /// State names in the order a customer meets them (breadth-first from `start`), then any
    /// state no path reaches, by name.
    fn state_names_in_order(&self) -> Vec<String> {
        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([self.start.as_str()]);
        seen.insert(self.start.as_str());
        while let Some(state_name) = queue.pop_front() {
            ordered.push(state_name.to_owned());
            for target in self.states[state_name].check.targets() {
                if let Target::State(next_name) = target
                    && seen.insert(next_name.as_str())
                {
                    queue.push_back(next_name);
                }
            }
        }
        ordered.extend(self.states.keys().filter(|state_name| !seen.contains(state_name.as_str())).cloned());
        ordered
    }
}

impl State {
    /// The question, as sent when the flow enters this state.
    fn ask(&self, fields: &BTreeMap<String, JsonValue>) -> Prompt {
        let mut text = render(&self.prompt, fields, None);
        // Without buttons the customer can answer a choice by number only if they see the numbers.
        if let Check::Choice { options } = &self.check
            && !self.buttons
        {
            for (index, option) in options.iter().enumerate() {
                text.push_str(&format!("\n{}. {}", index + 1, option.title));
            }
        }
        Prompt { text, buttons: self.buttons() }
    }

    fn retry_prompt(&self, fields: &BTreeMap<String, JsonValue>) -> Prompt {
        if let Some(retry) = &self.retry {
            return Prompt { text: render(retry, fields, None), buttons: self.buttons() };
        }
        let question = self.ask(fields);
        Prompt { text: format!("{}\n{}", self.complaint(fields), question.text), buttons: question.buttons }
    }

    fn buttons(&self) -> Vec<Button> {
        if !self.buttons {
            return Vec::new();
        }
        match &self.check {
            Check::YesNo { .. } => vec![
                Button { id: "yes".to_owned(), title: "Yes".to_owned() },
                Button { id: "no".to_owned(), title: "No".to_owned() },
            ],
            Check::Choice { options } => {
                options.iter().map(|option| Button { id: option.id.clone(), title: option.title.clone() }).collect()
            }
            Check::Validated { .. } => Vec::new(),
        }
    }

    /// The check's own message for an invalid answer.
    fn complaint(&self, fields: &BTreeMap<String, JsonValue>) -> String {
        match &self.check {
            Check::Validated { validator, .. } => match validator {
                Validator::Text => "Please type your answer.".to_owned(),
                Validator::Length { min_chars, max_chars } if min_chars == max_chars => {
                    format!("Please answer with exactly {min_chars} characters.")
                }
                Validator::Length { min_chars, max_chars } => {
                    format!("Please answer with {min_chars} to {max_chars} characters.")
                }
                Validator::Pattern { message: Some(message), .. } => render(message, fields, None),
                Validator::Pattern { message: None, .. } => "That does not look right, please check it.".to_owned(),
                Validator::Phone => {
                    "Please send the number in the international format: + and the country code, e.g. +14155550123."
                        .to_owned()
                }
                Validator::Integer { min, max } => format!("Please answer with a number from {min} to {max}."),
            },
            Check::YesNo { .. } => "Please answer yes or no.".to_owned(),
            Check::Choice { options } => {
                let titles: Vec<&str> = options.iter().map(|option| option.title.as_str()).collect();
                format!("Please choose one of: {}.", titles.join(", "))
            }
        }
    }

    /// The value to save and where to go, or `None` for an invalid answer.
    fn judge(&self, answer: Answer<'_>) -> Option<(JsonValue, &Target)> {
        // A pressed button says exactly what was meant; its text is only the button's title.
        if let Some(choice_id) = answer.choice_id {
            return match &self.check {
                Check::YesNo { yes, no } => match choice_id {
                    "yes" => Some((JsonValue::Bool(true), yes)),
                    "no" => Some((JsonValue::Bool(false), no)),
                    _ => None,
                },
                Check::Choice { options } => options
                    .iter()
                    .find(|option| option.id == choice_id)
                    .map(|option| (JsonValue::String(option.id.clone()), &option.next)),
                // A button left over from an earlier question is no answer to this one.
                Check::Validated { .. } => None,
            };
        }
        if answer.text.chars().nth(MAX_TEXT_CHARS).is_some() {
            return None;
        }
        let text = answer.text.trim();
        match &self.check {
            Check::Validated { validator, next } => validator.accept(text).map(|value| (value, next)),
            Check::YesNo { yes, no } => {
                parse_yes_no(text).map(|is_yes| (JsonValue::Bool(is_yes), if is_yes { yes } else { no }))
            }
            Check::Choice { options } => {
                match_choice(options, text).map(|option| (JsonValue::String(option.id.clone()), &option.next))
            }
        }
    }
}

impl Check {
    fn targets(&self) -> Vec<&Target> {
        match self {
            Check::Validated { next, .. } => vec![next],
            Check::YesNo { yes, no } => vec![yes, no],
            Check::Choice { options } => options.iter().map(|option| &option.next).collect(),
        }
    }
}

impl Validator {
    /// Checks a trimmed answer and returns the value to save.
    fn accept(&self, trimmed_text: &str) -> Option<JsonValue> {
        match self {
            Validator::Text => (!trimmed_text.is_empty()).then(|| JsonValue::String(trimmed_text.to_owned())),
            Validator::Length { min_chars, max_chars } => {
                let chars = trimmed_text.chars().count();
                (*min_chars..=*max_chars).contains(&chars).then(|| JsonValue::String(trimmed_text.to_owned()))
            }
            Validator::Pattern { regex, .. } => {
                regex.is_match(trimmed_text).then(|| JsonValue::String(trimmed_text.to_owned()))
            }
            Validator::Phone => normalise_phone(trimmed_text).map(JsonValue::String),
            Validator::Integer { min, max } => {
                let number: i64 = trimmed_text.parse().ok()?;
                (*min..=*max).contains(&number).then(|| JsonValue::from(number))
            }
        }
    }
}

/// `+` and 8 to 15 digits, the first not 0 (E.164), after dropping the separators people type.
fn normalise_phone(text: &str) -> Option<String> {
    let compact: String = text
        .chars()
        .filter(|character| !(character.is_whitespace() || matches!(character, '-' | '.' | '(' | ')')))
        .collect();
    let digits = compact.strip_prefix('+')?;
    if !digits.bytes().all(|byte| byte.is_ascii_digit()) || !(8..=15).contains(&digits.len()) || digits.starts_with('0')
    {
        return None;
    }
    Some(compact)
}

fn parse_yes_no(trimmed_text: &str) -> Option<bool> {
    let word = trimmed_text
        .trim_end_matches(|character: char| character.is_ascii_punctuation() || "¡¿…。！？".contains(character))
        .trim_end()
        .to_lowercase();
    if YES_WORDS.contains(&word.as_str()) {
        return Some(true);
    }
    if NO_WORDS.contains(&word.as_str()) {
        return Some(false);
    }
    None
}

fn match_choice<'o>(options: &'o [ChoiceOption], trimmed_text: &str) -> Option<&'o ChoiceOption> {
    let lowered = trimmed_text.to_lowercase();
    let by_id_or_title = options.iter().find(|option| option.id == lowered || option.title.to_lowercase() == lowered);
    if by_id_or_title.is_some() {
        return by_id_or_title;
    }
    let number: usize = trimmed_text.parse().ok()?;
    options.get(number.checked_sub(1)?)
}

// ---------------------------------------------------------------------------------------------
// Placeholders

enum Piece<'t> {
    Literal(&'t str),
    Placeholder(&'t str),
}

/// Splits a text at `{{name}}` placeholders (spaces inside the braces allowed). Braces around
/// anything that is not a name stay text, so a literal `{{` needs no escaping.
fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            break;
        };
        let name = after_open[..close].trim();
        let is_name =
            !name.is_empty() && name.chars().all(|character| character.is_ascii_alphanumeric() || character == '_');
        if is_name {
            pieces.push(Piece::Literal(&rest[..open]));
            pieces.push(Piece::Placeholder(name));
            rest = &after_open[close + 2..];
        } else {
            pieces.push(Piece::Literal(&rest[..open + 2]));
            rest = after_open;
        }
    }
    pieces.push(Piece::Literal(rest));
    pieces
}

fn placeholder_names(template: &str) -> Vec<&str> {
    pieces(template)
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Placeholder(name) => Some(name),
            Piece::Literal(_) => None,
        })
        .collect()
}

/// Fills placeholders; a field not collected yet renders empty rather than as `{{name}}`.
fn render(template: &str, fields: &BTreeMap<String, JsonValue>, order_id: Option<&str>) -> String {
    let mut rendered = String::with_capacity(template.len());
    for piece in pieces(template) {
        match piece {
            Piece::Literal(literal) => rendered.push_str(literal),
            Piece::Placeholder(name) => match (name, order_id) {
                (ORDER_ID_FIELD, Some(order_id)) => rendered.push_str(order_id),
                _ => rendered.push_str(&fields.get(name).map(field_text).unwrap_or_default()),
            },
        }
    }
    rendered
}

fn field_text(value: &JsonValue) -> String {
    match value {
        JsonValue::String(text) => text.clone(),
        // A customer reads "yes", not "true".
        JsonValue::Bool(true) => "yes".to_owned(),
        JsonValue::Bool(false) => "no".to_owned(),
        JsonValue::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Parses and checks one flow; `name` is the flow's name (the file stem), `file` names the source
/// in problems. Every problem is returned, not only the first.
pub fn parse(name: &str, file: &str, text: &str) -> Result<Flow, Vec<Problem>> {
    let mut checker = Checker::new(file);
    if !is_flow_name(name) {
        checker.problems.push(whole_file_problem(
            file,
            format!("the flow name {name:?} (the file name without .toml) must match [a-z0-9][a-z0-9_-]{{0,63}}"),
        ));
    }
    let document: Table = match text.parse() {
        Ok(document) => document,
        Err(error) => {
            let error: toml::de::Error = error;
            let reason = match error.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    format!("not valid TOML at line {line}, column {column}: {}", error.message().trim())
                }
                None => format!("not valid TOML: {}", error.message().trim()),
            };
            checker.problems.push(whole_file_problem(file, reason));
            return Err(checker.problems);
        }
    };
    let flow = checker.flow(name, &document);
    match flow {
        Some(flow) if checker.problems.is_empty() => Ok(flow),
        _ => Err(checker.problems),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, byte_offset: usize) -> (usize, usize) {
    let before = text.get(..byte_offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    (line, column)
}

/// The loaded flows, by name.
#[derive(Debug, Clone)]
pub struct Flows {
    by_name: BTreeMap<String, Flow>,
}

/// A flow as listed by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowSummary {
    pub name: String,
    pub description: String,
    /// In the order a customer meets them, starting with `start`.
    pub states: Vec<String>,
}

impl Flows {
    /// Only the shipped `order` flow.
    pub fn builtin() -> Flows {
        let order = parse("order", BUILTIN_ORDER_FILE, BUILTIN_ORDER_TEXT)
            .expect("the shipped flows/order.toml is valid; a unit test parses it");
        Flows { by_name: BTreeMap::from([(order.name.clone(), order)]) }
    }

    /// The built-in flows plus every `*.toml` in `dir` (not its subdirectories); a file named
    /// `order.toml` replaces the built-in `order`. Every problem of every file is returned at once.
    pub fn load_dir(dir: &Path) -> Result<Flows, FlowErrors> {
        let dir_name = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|error| {
            FlowErrors(vec![whole_file_problem(&dir_name, format!("cannot read the flows directory: {error}"))])
        })?;
        let mut problems = Vec::new();
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => {
                    let path = entry.path();
                    if path.extension().is_some_and(|extension| extension == "toml") && path.is_file() {
                        paths.push(path);
                    }
                }
                Err(error) => {
                    problems.push(whole_file_problem(&dir_name, format!("cannot list the flows directory: {error}")))
                }
            }
        }
        // Sorted so that problems come out in the same order on every machine.
        paths.sort();
        let mut flows = Flows::builtin();
        for path in paths {
            match Flows::check_file(&path) {
                Ok(flow) => {
                    flows.by_name.insert(flow.name.clone(), flow);
                }
                Err(FlowErrors(file_problems)) => problems.extend(file_problems),
            }
        }
        if !problems.is_empty() {
            return Err(FlowErrors(problems));
        }
        Ok(flows)
    }

    /// Reads and checks one flow file; the flow's name is the file stem.
    pub fn check_file(path: &Path) -> Result<Flow, FlowErrors> {
        let file = path.display().to_string();
        let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) else {
            return Err(FlowErrors(vec![whole_file_problem(&file, "the file name is not valid UTF-8".to_owned())]));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| FlowErrors(vec![whole_file_problem(&file, format!("cannot read: {error}"))]))?;
        parse(name, &file, &text).map_err(FlowErrors)
    }

    pub fn get(&self, name: &str) -> Option<&Flow> {
        self.by_name.get(name)
    }

    /// Flow names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// One summary per flow, sorted by name.
    pub fn summaries(&self) -> Vec<FlowSummary> {
        self.by_name.values().map(Flow::summary).collect()
    }
}

fn is_flow_name(name: &str) -> bool {
    let mut characters = name.chars();
    let Some(first) = characters.next() else {
        return false;
    };
    (first.is_ascii_lowercase() || first.is_ascii_digit())
        && name.len() <= 64
        && characters.all(|character| {
            character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_' || character == '-'
        })
}

/// `[a-z][a-z0-9_]*` of at most `max_len` characters: state and field names.
fn is_identifier(name: &str, max_len: usize) -> bool {
    let mut characters = name.chars();
    let Some(first) = characters.next() else {
        return false;
    };
    first.is_ascii_lowercase()
        && name.len() <= max_len
        && characters.all(|character| character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_')
}

fn is_option_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.chars().all(|character| {
            character.is_ascii_lowercase() || character.is_ascii_digit() || character == '_' || character == '-'
        })
}

fn is_http_url(url: &str) -> bool {
    match reqwest::Url::parse(url) {
        Ok(parsed) => {
            matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some_and(|host| !host.is_empty())
        }
        Err(_) => false,
    }
}

fn with_article(value: &TomlValue) -> String {
    let type_name = value.type_str();
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {type_name}")
}

/// A problem was recorded; the caller goes on checking the rest.
#[derive(Debug, Clone, Copy)]
struct Reported;

/// Which placeholders a text may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PlaceholderScope {
    /// The greeting is sent before anything is collected.
    Nothing,
    CollectedFields,
    /// `finish.text` also gets the caller's order id.
    CollectedFieldsAndOrderId,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Length,
    Regex,
    Phone,
    Integer,
    YesNo,
    Choice,
}

impl Kind {
    const ALL: [Kind; 7] =
        [Kind::Text, Kind::Length, Kind::Regex, Kind::Phone, Kind::Integer, Kind::YesNo, Kind::Choice];

    fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Length => "length",
            Kind::Regex => "regex",
            Kind::Phone => "phone",
            Kind::Integer => "integer",
            Kind::YesNo => "yes_no",
            Kind::Choice => "choice",
        }
    }

    /// The keys its `expect` table may hold.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Text | Kind::Phone | Kind::YesNo => &["kind"],
            Kind::Length | Kind::Integer => &["kind", "min", "max"],
            Kind::Regex => &["kind", "pattern", "message"],
            Kind::Choice => &["kind", "options"],
        }
    }
}

/// Where a problem is: the state it belongs to and the dotted key.
#[derive(Clone)]
struct Place<'s> {
    state: Option<&'s str>,
    key: String,
}

impl<'s> Place<'s> {
    fn root() -> Place<'s> {
        Place { state: None, key: String::new() }
    }

    fn state(state_name: &'s str) -> Place<'s> {
        Place { state: Some(state_name), key: format!("states.{state_name}") }
    }

    fn child(&self, key: &str) -> Place<'s> {
        let key = if self.key.is_empty() { key.to_owned() } else { format!("{}.{key}", self.key) };
        Place { state: self.state, key }
    }

    fn item(&self, index: usize) -> Place<'s> {
        Place { state: self.state, key: format!("{}[{index}]", self.key) }
    }
}

/// Collects problems while checking; each check returns `Err(Reported)` or `None` on failure so
/// checking goes on and the builder sees every problem in one pass.
struct Checker<'f> {
    file: &'f str,
    problems: Vec<Problem>,
    /// Every key under `[states]`, valid or not, so a target naming a misnamed state is not
    /// reported twice.
    state_names: BTreeSet<String>,
    saved_fields: BTreeSet<String>,
}

impl<'f> Checker<'f> {
    fn new(file: &'f str) -> Checker<'f> {
        Checker { file, problems: Vec::new(), state_names: BTreeSet::new(), saved_fields: BTreeSet::new() }
    }

    fn report(&mut self, place: &Place<'_>, reason: impl Into<String>) -> Reported {
        self.problems.push(Problem {
            file: self.file.to_owned(),
            state: place.state.map(str::to_owned),
            key: place.key.clone(),
            reason: reason.into(),
        });
        Reported
    }

    fn refuse_unknown_keys(&mut self, table: &Table, place: &Place<'_>, allowed: &[&str]) {
        for key in table.keys() {
            if !allowed.contains(&key.as_str()) {
                self.report(&place.child(key), format!("unknown key; expected one of: {}", allowed.join(", ")));
            }
        }
    }

    fn string<'t>(&mut self, table: &'t Table, place: &Place<'_>, key: &str) -> Result<Option<&'t str>, Reported> {
        match table.get(key) {
            None => Ok(None),
            Some(TomlValue::String(text)) => Ok(Some(text)),
            Some(other) => {
                Err(self.report(&place.child(key), format!("expected a string, found {}", with_article(other))))
            }
        }
    }

    fn integer(&mut self, table: &Table, place: &Place<'_>, key: &str) -> Result<Option<i64>, Reported> {
        match table.get(key) {
            None => Ok(None),
            Some(TomlValue::Integer(number)) => Ok(Some(*number)),
            Some(other) => {
                Err(self.report(&place.child(key), format!("expected an integer, found {}", with_article(other))))
            }
        }
    }

    fn boolean(&mut self, table: &Table, place: &Place<'_>, key: &str) -> Result<Option<bool>, Reported> {
        match table.get(key) {
            None => Ok(None),
            Some(TomlValue::Boolean(flag)) => Ok(Some(*flag)),
            Some(other) => {
                Err(self.report(&place.child(key), format!("expected true or false, found {}", with_article(other))))
            }
        }
    }

    fn table<'t>(&mut self, table: &'t Table, place: &Place<'_>, key: &str) -> Result<Option<&'t Table>, Reported> {
        match table.get(key) {
            None => Ok(None),
            Some(TomlValue::Table(inner)) => Ok(Some(inner)),
            Some(other) => {
                Err(self.report(&place.child(key), format!("expected a table, found {}", with_article(other))))
            }
        }
    }

    /// A text the flow sends: not blank, at most 4096 characters, placeholders naming fields
    /// that exist in `scope`.
    fn message(
        &mut self,
        table: &Table,
        place: &Place<'_>,
        key: &str,
        scope: PlaceholderScope,
    ) -> Result<Option<String>, Reported> {
        let Some(text) = self.string(table, place, key)? else {
            return Ok(None);
        };
        let place = place.child(key);
        if text.trim().is_empty() {
            return Err(self.report(&place, "must not be blank"));
        }
        // Every entry loses U+0000 on the way out (PostgreSQL text cannot hold it).
        if text.contains('\0') {
            return Err(self.report(&place, "must not contain U+0000"));
        }
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(
                self.report(&place, format!("is {chars} characters long; a message holds at most {MAX_TEXT_CHARS}"))
            );
        }
        let mut any_unknown = false;
        for name in placeholder_names(text) {
            let reason = match scope {
                PlaceholderScope::Nothing => {
                    Some(format!("{{{{{name}}}}}: nothing is collected yet when this is sent"))
                }
                PlaceholderScope::CollectedFields if name == ORDER_ID_FIELD => {
                    Some(format!("{{{{{ORDER_ID_FIELD}}}}} is only known in finish.text"))
                }
                _ if name == ORDER_ID_FIELD || self.saved_fields.contains(name) => None,
                _ => Some(format!("{{{{{name}}}}} names a field no state saves ({})", self.saved_fields_list())),
            };
            if let Some(reason) = reason {
                self.report(&place, reason);
                any_unknown = true;
            }
        }
        if any_unknown {
            return Err(Reported);
        }
        Ok(Some(text.to_owned()))
    }

    fn saved_fields_list(&self) -> String {
        if self.saved_fields.is_empty() {
            return "no state has save_as".to_owned();
        }
        let names: Vec<&str> = self.saved_fields.iter().map(String::as_str).collect();
        format!("saved: {}", names.join(", "))
    }

    /// The state names a target may use, for hints: the reserved ones already mean the targets.
    fn usable_state_names(&self) -> String {
        let names: Vec<&str> = self
            .state_names
            .iter()
            .map(String::as_str)
            .filter(|name| *name != FINISH_TARGET && *name != RESTART_TARGET)
            .collect();
        names.join(", ")
    }

    fn target(&mut self, table: &Table, place: &Place<'_>, key: &str) -> Result<Option<Target>, Reported> {
        let Some(name) = self.string(table, place, key)? else {
            return Ok(None);
        };
        match name {
            FINISH_TARGET => Ok(Some(Target::Finish)),
            RESTART_TARGET => Ok(Some(Target::Restart)),
            _ if self.state_names.contains(name) => Ok(Some(Target::State(name.to_owned()))),
            _ => Err(self.report(
                &place.child(key),
                format!("{name:?} names no state; use one of: {}, finish, restart", self.usable_state_names()),
            )),
        }
    }

    fn flow(&mut self, name: &str, document: &Table) -> Option<Flow> {
        let root = Place::root();
        self.refuse_unknown_keys(document, &root, TOP_LEVEL_KEYS);

        let states_table = match self.table(document, &root, "states") {
            Ok(Some(states)) if !states.is_empty() => Ok(states),
            Ok(_) => Err(self.report(&root.child("states"), "no states; a flow needs at least one [states.<name>]")),
            Err(reported) => Err(reported),
        };
        // Known before any state is checked, so targets and placeholders can be checked in one pass
        // whatever the order of the states in the file.
        if let Ok(states) = states_table {
            self.state_names = states.keys().cloned().collect();
            self.saved_fields = states
                .values()
                .filter_map(|state| state.get("save_as")?.as_str())
                .filter(|field| is_identifier(field, 40) && *field != ORDER_ID_FIELD)
                .map(str::to_owned)
                .collect();
        }

        let description = self.string(document, &root, "description").map(|text| text.unwrap_or_default().to_owned());
        let greeting = self.message(document, &root, "greeting", PlaceholderScope::Nothing);
        let restart_text = self.message(document, &root, "restart_text", PlaceholderScope::CollectedFields);
        let start = match self.string(document, &root, "start") {
            Ok(Some(start)) if self.state_names.contains(start) => Ok(start.to_owned()),
            // With no states at all, "names no state" would only repeat that problem.
            Ok(Some(_)) if self.state_names.is_empty() => Err(Reported),
            Ok(Some(start)) => {
                let states = self.usable_state_names();
                Err(self.report(&root.child("start"), format!("{start:?} names no state; states: {states}")))
            }
            Ok(None) => Err(self.report(&root.child("start"), "missing; name the state whose prompt comes first")),
            Err(reported) => Err(reported),
        };

        let mut states = BTreeMap::new();
        let mut all_states_valid = true;
        if let Ok(states_table) = states_table {
            for (state_name, state_value) in states_table {
                match self.state(state_name, state_value) {
                    Some(state) => {
                        states.insert(state_name.clone(), state);
                    }
                    None => all_states_valid = false,
                }
            }
        }
        let finish = self.finish(document, &root);

        let (Ok(description), Ok(greeting), Ok(restart_text), Ok(start), Ok(_), true, Some(finish)) =
            (description, greeting, restart_text, start, states_table, all_states_valid, finish)
        else {
            return None;
        };
        Some(Flow { name: name.to_owned(), description, start, greeting, restart_text, states, finish })
    }

    fn state(&mut self, state_name: &str, value: &TomlValue) -> Option<State> {
        let place = Place::state(state_name);
        let mut name_valid = true;
        if state_name == FINISH_TARGET || state_name == RESTART_TARGET {
            self.report(
                &place,
                format!("{state_name:?} is reserved: next = {state_name:?} already means the built-in target"),
            );
            name_valid = false;
        } else if !is_identifier(state_name, 64) {
            self.report(&place, "invalid state name; use [a-z][a-z0-9_]{0,63}");
            name_valid = false;
        }
        let Some(table) = value.as_table() else {
            self.report(&place, format!("expected a table ([states.{state_name}]), found {}", with_article(value)));
            return None;
        };
        self.refuse_unknown_keys(table, &place, STATE_KEYS);

        let prompt = match self.message(table, &place, "prompt", PlaceholderScope::CollectedFields) {
            Ok(Some(prompt)) => Ok(prompt),
            Ok(None) => Err(self.report(&place.child("prompt"), "missing; the question this state asks")),
            Err(reported) => Err(reported),
        };
        let save_as = self.save_as(table, &place);
        let retry = self.message(table, &place, "retry", PlaceholderScope::CollectedFields);
        let restart_text = self.message(table, &place, "restart_text", PlaceholderScope::CollectedFields);
        let buttons = self.boolean(table, &place, "buttons");
        let next = self.target(table, &place, "next");
        let yes = self.target(table, &place, "yes");
        let no = self.target(table, &place, "no");
        let check = self.check(table, &place, &buttons, next, yes, no);

        if let (Ok(Some(_)), Ok(check)) = (&restart_text, &check)
            && !check.targets().contains(&&Target::Restart)
        {
            self.report(&place.child("restart_text"), "this state never goes to \"restart\"");
            return None;
        }
        let (true, Ok(prompt), Ok(save_as), Ok(retry), Ok(restart_text), Ok(buttons), Ok(check)) =
            (name_valid, prompt, save_as, retry, restart_text, buttons, check)
        else {
            return None;
        };
        Some(State { prompt, check, save_as, retry, buttons: buttons.unwrap_or(false), restart_text })
    }

    fn save_as(&mut self, table: &Table, place: &Place<'_>) -> Result<Option<String>, Reported> {
        let Some(field) = self.string(table, place, "save_as")? else {
            return Ok(None);
        };
        let place = place.child("save_as");
        if field == ORDER_ID_FIELD {
            return Err(self.report(&place, "\"order_id\" is reserved: the caller fills it in finish.text"));
        }
        if !is_identifier(field, 40) {
            return Err(self.report(&place, "invalid field name; use [a-z][a-z0-9_]{0,39}"));
        }
        Ok(Some(field.to_owned()))
    }

    /// The `expect` table together with the keys that say where answers lead.
    fn check(
        &mut self,
        table: &Table,
        place: &Place<'_>,
        buttons: &Result<Option<bool>, Reported>,
        next: Result<Option<Target>, Reported>,
        yes: Result<Option<Target>, Reported>,
        no: Result<Option<Target>, Reported>,
    ) -> Result<Check, Reported> {
        let expect_place = place.child("expect");
        let expect = match self.table(table, place, "expect")? {
            Some(expect) => expect,
            None => return Err(self.report(&expect_place, "missing; e.g. expect = { kind = \"text\" }")),
        };
        let kind_names: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
        let kind = match self.string(expect, &expect_place, "kind")? {
            None => {
                return Err(
                    self.report(&expect_place.child("kind"), format!("missing; one of: {}", kind_names.join(", ")))
                );
            }
            Some(kind_name) => match Kind::ALL.into_iter().find(|kind| kind.name() == kind_name) {
                Some(kind) => kind,
                None => {
                    return Err(self.report(
                        &expect_place.child("kind"),
                        format!("unknown kind {kind_name:?}; one of: {}", kind_names.join(", ")),
                    ));
                }
            },
        };
        self.refuse_unknown_keys(expect, &expect_place, kind.keys());

        let mut routing_valid = true;
        if matches!(buttons, Ok(Some(_))) && !matches!(kind, Kind::YesNo | Kind::Choice) {
            self.report(
                &place.child("buttons"),
                format!("only a yes_no or choice state has buttons, not {}", kind.name()),
            );
            routing_valid = false;
        }
        if kind != Kind::YesNo {
            for (key, target) in [("yes", &yes), ("no", &no)] {
                if matches!(target, Ok(Some(_))) {
                    self.report(&place.child(key), "only a yes_no state has yes and no; use next");
                    routing_valid = false;
                }
            }
        }

        match kind {
            Kind::YesNo => {
                if matches!(next, Ok(Some(_))) {
                    self.report(&place.child("next"), "a yes_no state goes on by yes and no, not next");
                    routing_valid = false;
                }
                let yes = self.required_target(place, "yes", yes, "missing; a yes_no state needs both yes and no");
                let no = self.required_target(place, "no", no, "missing; a yes_no state needs both yes and no");
                let (true, Ok(yes), Ok(no)) = (routing_valid, yes, no) else {
                    return Err(Reported);
                };
                Ok(Check::YesNo { yes, no })
            }
            Kind::Choice => {
                let options = self.choice_options(expect, &expect_place, place, &next);
                let (true, Ok(options)) = (routing_valid, options) else {
                    return Err(Reported);
                };
                Ok(Check::Choice { options })
            }
            _ => {
                let validator = self.validator(kind, expect, &expect_place);
                let next = self.required_target(
                    place,
                    "next",
                    next,
                    "missing; where a valid answer leads: a state, \"finish\" or \"restart\"",
                );
                let (true, Ok(validator), Ok(next)) = (routing_valid, validator, next) else {
                    return Err(Reported);
                };
                Ok(Check::Validated { validator, next })
            }
        }
    }

    fn required_target(
        &mut self,
        place: &Place<'_>,
        key: &str,
        target: Result<Option<Target>, Reported>,
        reason_when_missing: &str,
    ) -> Result<Target, Reported> {
        match target? {
            Some(target) => Ok(target),
            None => Err(self.report(&place.child(key), reason_when_missing)),
        }
    }

    fn validator(&mut self, kind: Kind, expect: &Table, expect_place: &Place<'_>) -> Result<Validator, Reported> {
        match kind {
            Kind::Text => Ok(Validator::Text),
            Kind::Phone => Ok(Validator::Phone),
            Kind::Length => {
                let (min, max) = self.bounds(expect, expect_place, "a length check")?;
                let mut valid = true;
                if min < 1 {
                    self.report(&expect_place.child("min"), "must be at least 1: a blank answer is never valid");
                    valid = false;
                }
                if max > MAX_TEXT_CHARS as i64 {
                    self.report(
                        &expect_place.child("max"),
                        format!("must be at most {MAX_TEXT_CHARS}: no longer answer is accepted"),
                    );
                    valid = false;
                }
                let (true, Ok(min_chars), Ok(max_chars)) = (valid, usize::try_from(min), usize::try_from(max)) else {
                    return Err(Reported);
                };
                Ok(Validator::Length { min_chars, max_chars })
            }
            Kind::Integer => {
                let (min, max) = self.bounds(expect, expect_place, "an integer check")?;
                Ok(Validator::Integer { min, max })
            }
            Kind::Regex => {
                let message = self.message(expect, expect_place, "message", PlaceholderScope::CollectedFields);
                let regex = match self.string(expect, expect_place, "pattern")? {
                    None => Err(self.report(&expect_place.child("pattern"), "missing; a regex check needs a pattern")),
                    Some(pattern) => self.compile(pattern, &expect_place.child("pattern")),
                };
                Ok(Validator::Pattern { regex: regex?, message: message? })
            }
            Kind::YesNo | Kind::Choice => unreachable!("yes_no and choice are checked with their routing"),
        }
    }

    /// `min` and `max`, both required, `min <= max`.
    fn bounds(&mut self, expect: &Table, expect_place: &Place<'_>, what: &str) -> Result<(i64, i64), Reported> {
        let reason_when_missing = format!("missing; {what} needs both min and max");
        let min = match self.integer(expect, expect_place, "min") {
            Ok(Some(min)) => Ok(min),
            Ok(None) => Err(self.report(&expect_place.child("min"), reason_when_missing.clone())),
            Err(reported) => Err(reported),
        };
        let max = match self.integer(expect, expect_place, "max") {
            Ok(Some(max)) => Ok(max),
            Ok(None) => Err(self.report(&expect_place.child("max"), reason_when_missing)),
            Err(reported) => Err(reported),
        };
        let (min, max) = (min?, max?);
        if min > max {
            return Err(self.report(&expect_place.child("min"), format!("{min} is greater than max ({max})")));
        }
        Ok((min, max))
    }

    fn compile(&mut self, pattern: &str, place: &Place<'_>) -> Result<Regex, Reported> {
        // The pattern alone first: only a pattern that compiles by itself has balanced groups, so
        // wrapping it cannot let `a)|(b` escape the anchors.
        let compiled = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT_BYTES)
            .build()
            .and_then(|_| RegexBuilder::new(&format!(r"\A(?:{pattern})\z")).size_limit(REGEX_SIZE_LIMIT_BYTES).build());
        compiled.map_err(|error| self.report(place, format!("invalid pattern: {}", regex_error_reason(&error))))
    }

    fn choice_options(
        &mut self,
        expect: &Table,
        expect_place: &Place<'_>,
        state_place: &Place<'_>,
        state_next: &Result<Option<Target>, Reported>,
    ) -> Result<Vec<ChoiceOption>, Reported> {
        let options_place = expect_place.child("options");
        let items = match expect.get("options") {
            None => {
                return Err(
                    self.report(&options_place, "missing; e.g. options = [{ id = \"small\", title = \"Small\" }]")
                );
            }
            Some(TomlValue::Array(items)) => items,
            Some(other) => {
                return Err(self.report(&options_place, format!("expected an array, found {}", with_article(other))));
            }
        };
        if items.is_empty() || items.len() > MAX_CHOICE_OPTIONS {
            return Err(self.report(
                &options_place,
                format!(
                    "has {} options; a choice has 1 to {MAX_CHOICE_OPTIONS} (a WhatsApp list shows 10)",
                    items.len()
                ),
            ));
        }
        let mut options = Vec::new();
        let mut all_valid = true;
        let mut seen_ids = BTreeSet::new();
        let mut seen_titles = BTreeSet::new();
        for (index, item) in items.iter().enumerate() {
            let item_place = options_place.item(index);
            let Some(table) = item.as_table() else {
                self.report(&item_place, format!("expected a table {{ id, title }}, found {}", with_article(item)));
                all_valid = false;
                continue;
            };
            self.refuse_unknown_keys(table, &item_place, OPTION_KEYS);
            let id = match self.string(table, &item_place, "id") {
                Ok(Some(id)) if !is_option_id(id) => {
                    Err(self.report(&item_place.child("id"), "invalid id; use [a-z0-9_-]{1,64}"))
                }
                Ok(Some(id)) if !seen_ids.insert(id.to_owned()) => {
                    Err(self.report(&item_place.child("id"), format!("{id:?} is the id of an earlier option too")))
                }
                Ok(Some(id)) => Ok(id.to_owned()),
                Ok(None) => Err(self.report(&item_place.child("id"), "missing; the id a pressed button sends")),
                Err(reported) => Err(reported),
            };
            let title = match self.string(table, &item_place, "title") {
                Ok(Some(title)) if title.trim().is_empty() => {
                    Err(self.report(&item_place.child("title"), "must not be blank"))
                }
                Ok(Some(title)) if title.chars().count() > MAX_OPTION_TITLE_CHARS => Err(self.report(
                    &item_place.child("title"),
                    format!(
                        "is {} characters long; at most {MAX_OPTION_TITLE_CHARS} fit on a button or list row",
                        title.chars().count()
                    ),
                )),
                // A typed title picks the option, so two titles differing only in case are ambiguous.
                Ok(Some(title)) if !seen_titles.insert(title.to_lowercase()) => {
                    Err(self
                        .report(&item_place.child("title"), format!("{title:?} is the title of an earlier option too")))
                }
                Ok(Some(title)) => Ok(title.to_owned()),
                Ok(None) => Err(self.report(&item_place.child("title"), "missing; the text the customer sees")),
                Err(reported) => Err(reported),
            };
            let next = match (self.target(table, &item_place, "next"), state_next) {
                (Ok(Some(target)), _) => Ok(target),
                (Ok(None), Ok(Some(state_target))) => Ok(state_target.clone()),
                // The state's `next` is wrong: already reported.
                (Ok(None), Err(_)) => Err(Reported),
                (Ok(None), Ok(None)) => Err(self.report(
                    &item_place.child("next"),
                    format!("missing; give every option a next, or set {}.next", state_place.key),
                )),
                (Err(reported), _) => Err(reported),
            };
            match (id, title, next) {
                (Ok(id), Ok(title), Ok(next)) => options.push(ChoiceOption { id, title, next }),
                _ => all_valid = false,
            }
        }
        if !all_valid {
            return Err(Reported);
        }
        Ok(options)
    }

    fn finish(&mut self, document: &Table, root: &Place<'_>) -> Option<Finish> {
        let place = root.child("finish");
        let table = match self.table(document, root, "finish") {
            Ok(Some(table)) => table,
            Ok(None) => {
                self.report(&place, "missing; e.g. [finish] action = \"none\" text = \"Thank you!\"");
                return None;
            }
            Err(Reported) => return None,
        };
        self.refuse_unknown_keys(table, &place, FINISH_KEYS);
        let text = match self.message(table, &place, "text", PlaceholderScope::CollectedFieldsAndOrderId) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(self.report(&place.child("text"), "missing; sent after the action ran")),
            Err(reported) => Err(reported),
        };
        let url = self.string(table, &place, "url");
        let action = match self.string(table, &place, "action") {
            Ok(Some("order")) => self.no_url(&place, url).map(|()| Action::Order),
            Ok(Some("none")) => self.no_url(&place, url).map(|()| Action::None),
            Ok(Some("webhook")) => match url {
                Ok(Some(url)) if is_http_url(url) => Ok(Action::Webhook { url: url.to_owned() }),
                Ok(Some(_)) => Err(self.report(&place.child("url"), "must be an http or https URL with a host")),
                Ok(None) => Err(self.report(&place.child("url"), "missing; a webhook action needs the URL to post to")),
                Err(reported) => Err(reported),
            },
            Ok(Some(action)) => {
                Err(self
                    .report(&place.child("action"), format!("unknown action {action:?}; one of: order, webhook, none")))
            }
            Ok(None) => Err(self.report(&place.child("action"), "missing; one of: order, webhook, none")),
            Err(reported) => Err(reported),
        };
        let (Ok(text), Ok(action)) = (text, action) else {
            return None;
        };
        Some(Finish { action, text })
    }

    fn no_url(&mut self, finish_place: &Place<'_>, url: Result<Option<&str>, Reported>) -> Result<(), Reported> {
        match url? {
            Some(_) => Err(self.report(&finish_place.child("url"), "only a webhook action has a url")),
            None => Ok(()),
        }
    }
}

/// The regex crate's syntax errors draw the pattern with a caret over several lines; a problem
/// is one line, so keep the line that says what is wrong.
fn regex_error_reason(error: &regex::Error) -> String {
    let rendered = error.to_string();
    match rendered.lines().find_map(|line| line.trim().strip_prefix("error: ")) {
        Some(reason) => reason.to_owned(),
        None => rendered.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn typed(text: &str) -> Answer<'_> {
        Answer { text, choice_id: None }
    }

    fn texts(turn: &Turn) -> Vec<&str> {
        turn.replies.iter().map(|reply| reply.text.as_str()).collect()
    }

    /// A flow of one question whose answer is saved as `value`, then finishes.
    fn one_question_flow(expect: &str, routing: &str) -> Flow {
        let text = format!(
            "start = \"ask\"\n[states.ask]\nprompt = \"Question?\"\nexpect = {expect}\nsave_as = \"value\"\n{routing}\n\
             [finish]\naction = \"none\"\ntext = \"Done.\"\n"
        );
        parse("test", "test.toml", &text).unwrap_or_else(|problems| panic!("{}", FlowErrors(problems)))
    }

    fn saved_value(flow: &Flow, answer: Answer<'_>) -> Option<JsonValue> {
        let turn = flow.answer(&flow.begin().progress, answer);
        turn.completed.map(|completed| completed.fields["value"].clone())
    }

    #[test]
    fn flow_validators_accept_and_refuse() {
        let next = "next = \"finish\"";
        let yes_no = "yes = \"finish\"\nno = \"finish\"";
        let choice = r#"{ kind = "choice", options = [{ id = "small", title = "Small" }, { id = "large", title = "Extra Large" }] }"#;
        let cases: Vec<(&str, &str, &str, Option<JsonValue>)> = vec![
            (r#"{ kind = "text" }"#, next, "  hello  ", Some(json!("hello"))),
            (r#"{ kind = "text" }"#, next, "   ", None),
            (r#"{ kind = "length", min = 3, max = 5 }"#, next, " abc ", Some(json!("abc"))),
            (r#"{ kind = "length", min = 3, max = 5 }"#, next, "ab", None),
            (r#"{ kind = "length", min = 3, max = 5 }"#, next, "abcdef", None),
            (r#"{ kind = "length", min = 3, max = 5 }"#, next, "ééé", Some(json!("ééé"))),
            (r#"{ kind = "regex", pattern = "[A-Z]{2}[0-9]{3}" }"#, next, "AB123", Some(json!("AB123"))),
            (r#"{ kind = "regex", pattern = "[A-Z]{2}[0-9]{3}" }"#, next, "xAB123", None),
            (r#"{ kind = "regex", pattern = "[A-Z]{2}[0-9]{3}" }"#, next, "AB1234", None),
            (r#"{ kind = "regex", pattern = "a|b" }"#, next, "ab", None),
            (r#"{ kind = "phone" }"#, next, "+1 (415) 555-0123", Some(json!("+14155550123"))),
            (r#"{ kind = "phone" }"#, next, "+49.30.1234567", Some(json!("+49301234567"))),
            (r#"{ kind = "phone" }"#, next, "12345", None),
            (r#"{ kind = "phone" }"#, next, "4155550123", None),
            (r#"{ kind = "phone" }"#, next, "+0155550123", None),
            (r#"{ kind = "phone" }"#, next, "+1234567", None),
            (r#"{ kind = "phone" }"#, next, "+1234567890123456", None),
            (r#"{ kind = "phone" }"#, next, "+1415555O123", None),
            (r#"{ kind = "integer", min = 1, max = 50 }"#, next, " 50 ", Some(json!(50))),
            (r#"{ kind = "integer", min = 1, max = 50 }"#, next, "1", Some(json!(1))),
            (r#"{ kind = "integer", min = 1, max = 50 }"#, next, "0", None),
            (r#"{ kind = "integer", min = 1, max = 50 }"#, next, "51", None),
            (r#"{ kind = "integer", min = 1, max = 50 }"#, next, "fifty", None),
            (r#"{ kind = "integer", min = -5, max = 5 }"#, next, "-5", Some(json!(-5))),
            (r#"{ kind = "yes_no" }"#, yes_no, "Yes!", Some(json!(true))),
            (r#"{ kind = "yes_no" }"#, yes_no, " SÍ ", Some(json!(true))),
            (r#"{ kind = "yes_no" }"#, yes_no, "okay.", Some(json!(true))),
            (r#"{ kind = "yes_no" }"#, yes_no, "Nein", Some(json!(false))),
            (r#"{ kind = "yes_no" }"#, yes_no, "nope...", Some(json!(false))),
            (r#"{ kind = "yes_no" }"#, yes_no, "maybe", None),
            (r#"{ kind = "yes_no" }"#, yes_no, "yes please", None),
            (choice, next, "small", Some(json!("small"))),
            (choice, next, "extra large", Some(json!("large"))),
            (choice, next, "2", Some(json!("large"))),
            (choice, next, "3", None),
            (choice, next, "0", None),
            (choice, next, "medium", None),
        ];
        for (expect, routing, answer, expected) in cases {
            let flow = one_question_flow(expect, routing);
            assert_eq!(saved_value(&flow, typed(answer)), expected, "expect = {expect}, answer {answer:?}");
        }
    }

    #[test]
    fn flow_refuses_answers_longer_than_a_message() {
        let flow = one_question_flow(r#"{ kind = "text" }"#, "next = \"finish\"");
        let longest = "a".repeat(MAX_TEXT_CHARS);
        let too_long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(saved_value(&flow, typed(&longest)), Some(json!(longest)));
        assert_eq!(saved_value(&flow, typed(&too_long)), None);
    }

    #[test]
    fn flow_order_from_begin_to_completion() {
        let flows = Flows::builtin();
        let flow = flows.get("order").expect("built in");
        let address_prompt = "What is the delivery address?";
        let phone_prompt = "Which phone number can the courier call? Use the international format, e.g. +14155550123.";
        let quantity_prompt = "How many would you like (1 to 50)?";

        let turn = flow.begin();
        assert_eq!(texts(&turn), ["Hi! I can take your order.", address_prompt]);
        assert_eq!(turn.progress.state.as_deref(), Some("address"));

        let turn = flow.answer(&turn.progress, typed("abc"));
        assert_eq!(texts(&turn), ["An address is 5 to 200 characters long. What is the delivery address?"]);
        assert_eq!((turn.progress.state.as_deref(), turn.progress.invalid_answers), (Some("address"), 1));

        let turn = flow.answer(&turn.progress, typed("  1 Main Street, Springfield "));
        assert_eq!(texts(&turn), [phone_prompt]);
        assert_eq!(turn.progress.invalid_answers, 0);

        let turn = flow.answer(&turn.progress, typed("12345"));
        let phone_complaint =
            "Please send the number in the international format: + and the country code, e.g. +14155550123.";
        assert_eq!(texts(&turn), [format!("{phone_complaint}\n{phone_prompt}")]);

        let turn = flow.answer(&turn.progress, typed("+1 (415) 555-0123"));
        assert_eq!(texts(&turn), [quantity_prompt]);

        let turn = flow.answer(&turn.progress, typed("0"));
        assert_eq!(texts(&turn), [format!("Please answer with a number from 1 to 50.\n{quantity_prompt}")]);
        let turn = flow.answer(&turn.progress, typed("fifty"));
        assert_eq!(turn.progress.invalid_answers, 2);

        let turn = flow.answer(&turn.progress, typed("3"));
        assert_eq!(
            texts(&turn),
            ["Please confirm: 3 to 1 Main Street, Springfield, phone +14155550123. Is that right?"]
        );
        let yes_no_buttons = vec![
            Button { id: "yes".to_owned(), title: "Yes".to_owned() },
            Button { id: "no".to_owned(), title: "No".to_owned() },
        ];
        assert_eq!(turn.replies[0].buttons, yes_no_buttons);

        let turn = flow.answer(&turn.progress, typed("no"));
        assert_eq!(texts(&turn), ["No problem, let's start over.", address_prompt]);
        assert_eq!(turn.progress, Progress { state: Some("address".to_owned()), ..Progress::default() });

        let mut progress = turn.progress;
        for text in ["1 Main Street, Springfield", "+14155550123", "3"] {
            let turn = flow.answer(&progress, typed(text));
            assert!(turn.completed.is_none());
            progress = turn.progress;
        }
        // Stored and read back between messages, as the caller does through Redis.
        let progress: Progress = serde_json::from_str(&serde_json::to_string(&progress).unwrap()).unwrap();
        let turn = flow.answer(&progress, typed("Yes!"));
        let expected_fields = BTreeMap::from([
            ("address".to_owned(), json!("1 Main Street, Springfield")),
            ("phone".to_owned(), json!("+14155550123")),
            ("quantity".to_owned(), json!(3)),
        ]);
        assert_eq!(turn.completed, Some(Completed { fields: expected_fields.clone(), action: Action::Order }));
        assert!(turn.replies.is_empty());
        assert_eq!(turn.progress, Progress::default());
        assert_eq!(flow.finish_text(&expected_fields, "A-1001"), "Thank you! Your order A-1001 is placed.");

        // After finishing, the next message opens a new conversation.
        let turn = flow.answer(&turn.progress, typed("hello again"));
        assert_eq!(texts(&turn), ["Hi! I can take your order.", address_prompt]);
    }

    #[test]
    fn flow_button_press_takes_precedence_over_text() {
        let flow = one_question_flow(
            r#"{ kind = "choice", options = [{ id = "small", title = "Small" }, { id = "large", title = "Large", next = "restart" }] }"#,
            "buttons = true\nnext = \"finish\"",
        );
        let begin = flow.begin();
        assert_eq!(begin.replies[0].text, "Question?");
        assert_eq!(
            begin.replies[0].buttons.iter().map(|button| button.id.as_str()).collect::<Vec<_>>(),
            ["small", "large"]
        );
        let pressed = Answer { text: "Large", choice_id: Some("small") };
        assert_eq!(saved_value(&flow, pressed), Some(json!("small")));
        // The option's own next wins over the state's.
        let turn = flow.answer(&begin.progress, Answer { text: "whatever", choice_id: Some("large") });
        assert_eq!((turn.completed, turn.progress.state.as_deref()), (None, Some("ask")));
        // An unknown id (a stale button) is an invalid answer even if the text would match.
        let turn = flow.answer(&begin.progress, Answer { text: "Small", choice_id: Some("medium") });
        assert_eq!(turn.progress.invalid_answers, 1);
        assert_eq!(turn.replies[0].text, "Please choose one of: Small, Large.\nQuestion?");

        let yes_no = one_question_flow(r#"{ kind = "yes_no" }"#, "yes = \"finish\"\nno = \"finish\"");
        assert_eq!(saved_value(&yes_no, Answer { text: "No", choice_id: Some("yes") }), Some(json!(true)));
        let text = one_question_flow(r#"{ kind = "text" }"#, "next = \"finish\"");
        assert_eq!(saved_value(&text, Answer { text: "Yes", choice_id: Some("yes") }), None);
    }

    #[test]
    fn flow_choice_without_buttons_lists_numbered_options() {
        let flow = one_question_flow(
            r#"{ kind = "choice", options = [{ id = "small", title = "Small" }, { id = "large", title = "Large" }] }"#,
            "next = \"finish\"",
        );
        let begin = flow.begin();
        assert_eq!(begin.replies[0], Prompt::plain("Question?\n1. Small\n2. Large".to_owned()));
    }

    fn problem_keys(text: &str) -> Vec<(String, String)> {
        let problems = parse("broken", "broken.toml", text).expect_err("the flow is broken");
        for problem in &problems {
            assert_eq!(problem.file, "broken.toml");
            let in_state =
                problem.key.strip_prefix("states.").map(|rest| rest.split(['.', '[']).next().unwrap_or(rest));
            assert_eq!(problem.state.as_deref(), in_state, "{problem}");
        }
        problems.into_iter().map(|problem| (problem.key, problem.reason)).collect()
    }

    #[test]
    fn flow_reports_every_problem_with_its_dotted_key() {
        let broken = r#"
description = "Everything wrong"
start = "nowhere"
colour = "blue"

[states.name]
prompt = "Hi {{nickname}}, what is your name?"
expect = { kind = "length", min = 10, max = 2 }
save_as = "Name"
next = "age"
buttons = true

[states.age]
prompt = "How old are you?"
expect = { kind = "integer", min = 1 }
save_as = "age"
next = "missing_state"

[states.agree]
prompt = "   "
expect = { kind = "yes_no" }
yes = "finish"

[states.code]
prompt = "Your code?"
expect = { kind = "regex", pattern = "([a-z]+", flags = "i" }
next = "finish"

[states.colour]
prompt = "Colour?"
expect = { kind = "choice", options = [{ id = "red", title = "Red" }, { id = "red", title = "A title far too long for a button" }] }

[states.mood]
prompt = "Mood?"
expect = { kind = "feelings" }
next = "finish"

[states.restart]
prompt = "Reserved?"
expect = { kind = "text" }
next = "finish"

[finish]
action = "webhook"
url = "ftp://example.com/hook"
text = "Thanks {{order_id}}, {{age}} and {{shoe_size}}"
"#;
        let found = problem_keys(broken);
        let keys: BTreeSet<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
        let expected = BTreeSet::from([
            "colour",
            "start",
            "states.name.prompt",
            "states.name.expect.min",
            "states.name.save_as",
            "states.name.buttons",
            "states.age.expect.max",
            "states.age.next",
            "states.agree.prompt",
            "states.agree.no",
            "states.code.expect.flags",
            "states.code.expect.pattern",
            "states.colour.expect.options[1].id",
            "states.colour.expect.options[1].title",
            "states.colour.expect.options[0].next",
            "states.colour.expect.options[1].next",
            "states.mood.expect.kind",
            "states.restart",
            "finish.url",
            "finish.text",
        ]);
        assert_eq!(keys, expected, "{found:#?}");
        let reason_of =
            |key: &str| found.iter().find(|(found_key, _)| found_key == key).map(|(_, reason)| reason.as_str());
        assert_eq!(reason_of("states.name.expect.min"), Some("10 is greater than max (2)"));
        assert!(reason_of("states.name.prompt").unwrap().contains("{{nickname}} names a field no state saves"));
        assert!(reason_of("finish.text").unwrap().contains("{{shoe_size}}"));
        assert!(reason_of("states.code.expect.pattern").unwrap().starts_with("invalid pattern: "));
        assert!(!reason_of("states.code.expect.pattern").unwrap().contains('\n'));
    }

    #[test]
    fn flow_reports_structural_problems() {
        let cases: Vec<(&str, &[&str])> = vec![
            ("[finish]\naction = \"none\"\ntext = \"x\"\n", &["start", "states"]),
            ("start = \"a\"\n[states.a]\nprompt = \"?\"\nexpect = { kind = \"text\" }\n", &["states.a.next", "finish"]),
            (
                "start = \"a\"\ngreeting = \"Hi {{name}}\"\n[states.a]\nprompt = \"{{order_id}}?\"\nexpect = { kind = \"text\" }\nsave_as = \"name\"\nnext = \"finish\"\nrestart_text = \"again\"\n[finish]\naction = \"bake\"\ntext = \"x\"\n",
                &["greeting", "states.a.prompt", "states.a.restart_text", "finish.action"],
            ),
            (
                "start = \"a\"\n[states.a]\nprompt = \"?\"\nexpect = { kind = \"yes_no\" }\nnext = \"finish\"\nyes = \"finish\"\nno = \"finish\"\n[finish]\naction = \"webhook\"\ntext = \"x\"\n",
                &["states.a.next", "finish.url"],
            ),
            (
                "start = \"a\"\n[states.a]\nprompt = \"?\"\nexpect = { kind = \"length\", min = 0, max = 5000 }\nsave_as = \"order_id\"\nnext = \"finish\"\nno = \"finish\"\n[finish]\naction = \"order\"\nurl = \"https://example.com\"\ntext = \"x\"\n",
                &["states.a.expect.min", "states.a.expect.max", "states.a.save_as", "states.a.no", "finish.url"],
            ),
            (
                "start = \"a\"\n[states.a]\nprompt = \"?\"\nexpect = { kind = \"choice\", options = [] }\nnext = \"finish\"\n[states.B]\nprompt = \"?\"\nexpect = \"text\"\nnext = \"finish\"\n[finish]\naction = \"none\"\ntext = \"x\"\n",
                &["states.a.expect.options", "states.B", "states.B.expect"],
            ),
        ];
        for (text, expected) in cases {
            let found = problem_keys(text);
            let keys: BTreeSet<&str> = found.iter().map(|(key, _)| key.as_str()).collect();
            assert_eq!(keys, expected.iter().copied().collect::<BTreeSet<_>>(), "{found:#?}");
        }
    }

    #[test]
    fn flow_toml_syntax_error_is_one_problem_with_line_and_column() {
        let problems =
            parse("order", "order.toml", "start = \"a\"\n[states.a]\nprompt = \"unterminated\n").unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "");
        assert!(problems[0].reason.starts_with("not valid TOML at line 3, column "), "{}", problems[0].reason);
        assert!(problems[0].to_string().starts_with("order.toml: not valid TOML"));
    }

    #[test]
    fn flow_name_must_be_a_valid_file_stem() {
        let problems = parse("Order Form", "flows/Order Form.toml", BUILTIN_ORDER_TEXT).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].reason.contains("\"Order Form\""));
    }

    #[test]
    fn flow_errors_list_every_problem_under_a_count() {
        let problem = |key: &str| Problem {
            file: "flows/a.toml".to_owned(),
            state: None,
            key: key.to_owned(),
            reason: "is wrong".to_owned(),
        };
        let errors = FlowErrors(vec![problem("start"), problem("finish.url")]);
        assert_eq!(
            errors.to_string(),
            "2 problems in flow files:\nflows/a.toml: start: is wrong\nflows/a.toml: finish.url: is wrong"
        );
    }

    #[test]
    fn flow_builtin_contains_order() {
        let flows = Flows::builtin();
        assert_eq!(flows.names(), ["order"]);
        let summaries = flows.summaries();
        assert_eq!(summaries[0].states, ["address", "phone", "quantity", "confirm"]);
        assert_eq!(summaries[0].description, "Takes an order: address, phone, quantity, confirmation");
    }

    #[test]
    fn flow_load_dir_reports_only_the_bad_files_problems() {
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("chatdesk-flow-test-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = "start = \"ask\"\n[states.ask]\nprompt = \"Name?\"\nexpect = { kind = \"text\" }\nnext = \"finish\"\n\
                    [finish]\naction = \"webhook\"\nurl = \"https://example.com/hook\"\ntext = \"Thanks.\"\n";
        let bad = "start = \"ask\"\n[states.ask]\nprompt = \"Name?\"\nexpect = { kind = \"txt\" }\nnext = \"finish\"\n\
                   [finish]\naction = \"none\"\n";
        std::fs::write(dir.join("lead.toml"), good).unwrap();
        std::fs::write(dir.join("survey.toml"), bad).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a flow").unwrap();

        let loaded = Flows::load_dir(&dir);
        std::fs::remove_file(dir.join("survey.toml")).unwrap();
        let reloaded = Flows::load_dir(&dir);
        let missing = Flows::load_dir(&dir.join("missing"));
        std::fs::remove_dir_all(&dir).unwrap();

        let errors = loaded.expect_err("survey.toml is broken");
        let bad_file = dir.join("survey.toml").display().to_string();
        assert!(errors.0.iter().all(|problem| problem.file == bad_file), "{errors}");
        let keys: Vec<&str> = errors.0.iter().map(|problem| problem.key.as_str()).collect();
        assert_eq!(keys, ["states.ask.expect.kind", "finish.text"]);
        assert!(errors.to_string().starts_with("2 problems in flow files:\n"));

        let flows = reloaded.unwrap();
        assert_eq!(flows.names(), ["lead", "order"]);
        assert_eq!(flows.get("lead").unwrap().answer(&Progress::default(), typed("hi")).replies[0].text, "Name?");
        assert_eq!(missing.unwrap_err().0.len(), 1);
    }
}
