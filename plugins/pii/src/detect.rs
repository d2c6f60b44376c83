//! The detectors: small hand-written byte scanners, one per kind, with checksums where the kind
//! has one (Luhn for cards, mod-97 for IBANs) and shape rules elsewhere.
//!
//! No regex engine: the plugin gets a fresh instance per call, so anything compiled at start-up
//! is paid on every call. These scanners need no set-up at all and run in one pass each over the
//! text (each looks for its own trigger bytes: `@`, digits, `+`, `:`, upper-case letters, ...).
//! Every pattern is ASCII, so match bounds always fall on UTF-8 character boundaries.

/// The kinds of personal data and secrets the plugin knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// E-mail address.
    Email,
    /// Phone number: `+` and a country code, or a North American number.
    Phone,
    /// Payment card number (Luhn-checked, known issuer prefix).
    Card,
    /// US social security number.
    Ssn,
    /// IBAN (mod-97 checked).
    Iban,
    /// IPv4 or IPv6 address.
    Ip,
    /// API keys, private key blocks, bearer tokens, JWTs, high-entropy tokens.
    Secret,
}

/// Every kind, in config order.
pub const KINDS: [Kind; 7] = [
    Kind::Email,
    Kind::Phone,
    Kind::Card,
    Kind::Ssn,
    Kind::Iban,
    Kind::Ip,
    Kind::Secret,
];

impl Kind {
    /// Config name (`email`, `card`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::Card => "card",
            Kind::Ssn => "ssn",
            Kind::Iban => "iban",
            Kind::Ip => "ip",
            Kind::Secret => "secret",
        }
    }
    /// Placeholder tag (`EMAIL`, `CARD`, ...).
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::Card => "CARD",
            Kind::Ssn => "SSN",
            Kind::Iban => "IBAN",
            Kind::Ip => "IP",
            Kind::Secret => "SECRET",
        }
    }
    /// What a human calls it, for deny messages.
    pub fn human(self) -> &'static str {
        match self {
            Kind::Email => "an e-mail address",
            Kind::Phone => "a phone number",
            Kind::Card => "a payment card number",
            Kind::Ssn => "a US social security number",
            Kind::Iban => "an IBAN",
            Kind::Ip => "an IP address",
            Kind::Secret => "a secret (API key, private key or token)",
        }
    }
    /// Parse a config name.
    pub fn from_name(s: &str) -> Option<Kind> {
        KINDS.iter().copied().find(|k| k.name() == s)
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// One detected value: `text[start..end]` is of `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    /// The kind detected.
    pub kind: Kind,
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset after the last byte.
    pub end: usize,
}

/// Which detectors run.
#[derive(Clone, Copy, Debug)]
pub struct Detectors {
    on: [bool; 7],
    /// Flag long random-looking tokens as secrets.
    pub high_entropy: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors {
            on: [true; 7],
            high_entropy: true,
        }
    }
}

impl Detectors {
    /// Switch one kind on or off.
    pub fn set(&mut self, kind: Kind, on: bool) {
        self.on[kind.index()] = on;
    }
    /// No detector on (restore-only passes).
    pub fn none() -> Detectors {
        Detectors {
            on: [false; 7],
            high_entropy: false,
        }
    }
    /// Whether a kind is on.
    pub fn is_on(&self, kind: Kind) -> bool {
        self.on[kind.index()]
    }
}

/// All matches in `text`, sorted by start, not overlapping. An unterminated private key block
/// runs to the end of `text`.
pub fn scan(text: &str, d: &Detectors) -> Vec<Match> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    // Every detector but e-mail starts a match only here: one pass finds them for all.
    let mut starts = Vec::with_capacity(b.len() / 4);
    let mut ats = Vec::new();
    let mut prev_word = false;
    for (i, &c) in b.iter().enumerate() {
        let class = CLASS[usize::from(c)];
        if class & START != 0 && !prev_word {
            starts.push(i);
        }
        if c == b'@' {
            ats.push(i);
        }
        prev_word = class & WORD != 0;
    }
    if d.is_on(Kind::Secret) {
        secrets(b, &starts, d.high_entropy, &mut found);
    }
    if d.is_on(Kind::Email) {
        emails(b, &ats, &mut found);
    }
    if d.is_on(Kind::Iban) {
        ibans(b, &starts, &mut found);
    }
    if d.is_on(Kind::Card) {
        cards(b, &starts, &mut found);
    }
    if d.is_on(Kind::Ssn) {
        ssns(b, &starts, &mut found);
    }
    if d.is_on(Kind::Ip) {
        ips(text, &starts, &mut found);
    }
    if d.is_on(Kind::Phone) {
        phones(b, &starts, &mut found);
    }
    if found.is_empty() {
        return found;
    }
    // Earlier detectors (more specific) win overlaps: stable sort keeps their order for ties,
    // then the longest at a start.
    found.sort_by(|x, y| x.start.cmp(&y.start).then(y.end.cmp(&x.end)));
    let mut out: Vec<Match> = Vec::with_capacity(found.len());
    for m in found {
        match out.last_mut() {
            Some(last) if m.start < last.end => {
                // Overlap: keep the higher-priority (lower kind rank among secret-first order)
                // one only if it is also longer; otherwise keep what we have.
                if priority(m.kind) < priority(last.kind) && m.end - m.start > last.end - last.start
                {
                    *last = m;
                }
            }
            _ => out.push(m),
        }
    }
    out
}

/// Byte classes, looked up once per byte in [`scan`]'s single pass.
const WORD: u8 = 1; // letter, digit or '_'
const START: u8 = 2; // may start a match: letter, digit, '+', '(' or ':'
const TOKEN: u8 = 4; // may be part of a token: letter, digit, '_', '-', '+', '/'
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        if alnum || b == b'_' {
            t[c] |= WORD;
        }
        if alnum || b == b'+' || b == b'(' || b == b':' {
            t[c] |= START;
        }
        if alnum || matches!(b, b'_' | b'-' | b'+' | b'/') {
            t[c] |= TOKEN;
        }
        c += 1;
    }
    t
};

fn priority(k: Kind) -> u8 {
    match k {
        Kind::Secret => 0,
        Kind::Email => 1,
        Kind::Iban => 2,
        Kind::Card => 3,
        Kind::Ssn => 4,
        Kind::Ip => 5,
        Kind::Phone => 6,
    }
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// True if position `i` starts a word: no letter, digit or `_` right before it.
fn word_start(b: &[u8], i: usize) -> bool {
    i == 0 || !(is_alnum(b[i - 1]) || b[i - 1] == b'_')
}

/// True if position `i` ends a word: no letter, digit or `_` at it.
fn word_end(b: &[u8], i: usize) -> bool {
    i >= b.len() || !(is_alnum(b[i]) || b[i] == b'_')
}

// ---------------------------------------------------------------------------------- e-mail

fn email_local(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn email_domain(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'.' | b'-')
}

fn emails(b: &[u8], ats: &[usize], out: &mut Vec<Match>) {
    let mut floor = 0; // no match may start before the end of the previous one
    for &i in ats {
        if i < floor {
            continue;
        }
        let mut s = i;
        while s > floor && email_local(b[s - 1]) {
            s -= 1;
        }
        while s < i && b[s] == b'.' {
            s += 1;
        }
        let mut e = i + 1;
        while e < b.len() && email_domain(b[e]) {
            e += 1;
        }
        while e > i + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        let domain = &b[i + 1..e];
        let ok = s < i
            && b[i - 1] != b'.'
            && domain.contains(&b'.')
            && domain[0] != b'.'
            && !domain.windows(2).any(|w| w == b"..")
            && tld_ok(domain);
        if ok {
            out.push(Match {
                kind: Kind::Email,
                start: s,
                end: e,
            });
            floor = e;
        }
    }
}

fn tld_ok(domain: &[u8]) -> bool {
    let tld = domain.rsplit(|&c| c == b'.').next().unwrap_or_default();
    tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------------------- cards

/// Digit groups separated by single spaces or hyphens, starting at a word start: returns
/// (group start, group end) pairs.
fn digit_groups(b: &[u8], mut i: usize, seps: &[u8]) -> Vec<(usize, usize)> {
    let mut groups = Vec::new();
    loop {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            break;
        }
        groups.push((s, i));
        if i + 1 < b.len() && seps.contains(&b[i]) && b[i + 1].is_ascii_digit() {
            i += 1;
        } else {
            break;
        }
    }
    groups
}

/// Digits in the run of digit groups at `i` (as [`digit_groups`] sees it) and where it ends.
fn run_digits(b: &[u8], mut i: usize, seps: &[u8]) -> (usize, usize) {
    let mut n = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            n += 1;
        } else if !(seps.contains(&b[i]) && i + 1 < b.len() && b[i + 1].is_ascii_digit() && n > 0) {
            break;
        }
        i += 1;
    }
    (n, i)
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (n, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if n % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

fn card_prefix(d: &[u8]) -> bool {
    let n = |k: usize| -> u32 {
        d.iter()
            .take(k)
            .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'))
    };
    let len = d.len();
    match d[0] {
        b'4' => matches!(len, 13 | 16 | 19),
        b'5' => (51..=55).contains(&n(2)) && len == 16,
        b'2' => (2221..=2720).contains(&n(4)) && len == 16,
        b'3' => {
            (matches!(n(2), 34 | 37) && len == 15)
                || (n(2) == 35 && (16..=19).contains(&len))
                || (matches!(n(2), 36 | 38 | 39 | 30) && (14..=19).contains(&len))
        }
        b'6' => {
            (n(4) == 6011 || n(2) == 65 || (644..=649).contains(&n(3)) || n(2) == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

fn cards(b: &[u8], starts: &[usize], out: &mut Vec<Match>) {
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }

        if !b[i].is_ascii_digit() || !word_start(b, i) || (i > 0 && matches!(b[i - 1], b'.' | b'-'))
        {
            floor = i + 1;
            continue;
        }
        let (n, run_end) = run_digits(b, i, b" -");
        if n < 13 {
            floor = run_end.max(i + 1);
            continue;
        }
        let groups = digit_groups(b, i, b" -");
        let next = groups.last().map_or(i + 1, |g| g.1);
        // Try windows of consecutive groups, longest first, for a Luhn-valid card.
        let mut best: Option<(usize, usize)> = None;
        'outer: for a in 0..groups.len() {
            for z in (a..groups.len()).rev() {
                let (s, e) = (groups[a].0, groups[z].1);
                if !word_end(b, e) && z == groups.len() - 1 {
                    continue;
                }
                let digits: Vec<u8> = b[s..e].iter().copied().filter(u8::is_ascii_digit).collect();
                let grouped =
                    groups[a..z].iter().all(|g| g.1 - g.0 >= 4) && groups[z].1 - groups[z].0 >= 3;
                if grouped
                    && (13..=19).contains(&digits.len())
                    && card_prefix(&digits)
                    && luhn(&digits)
                {
                    best = Some((s, e));
                    break 'outer;
                }
            }
        }
        if let Some((s, e)) = best {
            out.push(Match {
                kind: Kind::Card,
                start: s,
                end: e,
            });
        }
        floor = next.max(i + 1);
    }
}

// ---------------------------------------------------------------------------------- SSN

fn ssn_valid(d: &[u8]) -> bool {
    let area = d[..3]
        .iter()
        .fold(0u32, |a, &c| a * 10 + u32::from(c - b'0'));
    let group = &d[3..5];
    let serial = &d[5..9];
    area != 0 && area != 666 && area < 900 && group != b"00" && serial != b"0000"
}

fn ssns(b: &[u8], starts: &[usize], out: &mut Vec<Match>) {
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }
        if i + 9 > b.len() {
            break;
        }

        if !b[i].is_ascii_digit() || !word_start(b, i) || (i > 0 && matches!(b[i - 1], b'-' | b'.'))
        {
            floor = i + 1;
            continue;
        }
        let (n, run_end) = run_digits(b, i, b"- ");
        if n != 9 {
            floor = run_end.max(i + 1);
            continue;
        }
        let groups = digit_groups(b, i, b"- ");
        let next = groups.last().map_or(i + 1, |g| g.1);
        let end = groups.last().map_or(i, |g| g.1);
        let lens: Vec<usize> = groups.iter().map(|g| g.1 - g.0).collect();
        let ended = word_end(b, end) && !(end < b.len() && b[end] == b'-');
        let m = if lens == [3, 2, 4] && ended {
            // Same separator both times.
            let (s1, s2) = (b[groups[0].1], b[groups[1].1]);
            (s1 == s2).then_some((groups[0].0, end))
        } else if lens == [9] && ended && ssn_context(b, i) {
            Some((i, end))
        } else {
            None
        };
        if let Some((s, e)) = m {
            let digits: Vec<u8> = b[s..e].iter().copied().filter(u8::is_ascii_digit).collect();
            if ssn_valid(&digits) {
                out.push(Match {
                    kind: Kind::Ssn,
                    start: s,
                    end: e,
                });
            }
        }
        floor = next.max(i + 1);
    }
}

/// A bare nine-digit number counts as an SSN only after "SSN" or "social security" nearby.
fn ssn_context(b: &[u8], i: usize) -> bool {
    let from = i.saturating_sub(32);
    let before = &b[from..i];
    contains_ci(before, b"ssn") || contains_ci(before, b"social security")
}

fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------------- IBAN

fn iban_valid(chars: &[u8]) -> bool {
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in chars[4..].iter().chain(chars[..4].iter()) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ibans(b: &[u8], starts: &[usize], out: &mut Vec<Match>) {
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }
        if i + 15 > b.len() {
            break;
        }

        if !(b[i].is_ascii_uppercase()
            && b[i + 1].is_ascii_uppercase()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && word_start(b, i))
        {
            floor = i + 1;
            continue;
        }
        // Collect [A-Z0-9] with single spaces between groups; remember group ends.
        let mut chars = Vec::with_capacity(34);
        let mut ends = Vec::new(); // (byte end, chars so far)
        let mut j = i;
        while j < b.len() && chars.len() < 34 {
            let c = b[j];
            if c.is_ascii_uppercase() || c.is_ascii_digit() {
                chars.push(c);
                j += 1;
                if j >= b.len() || !(b[j].is_ascii_uppercase() || b[j].is_ascii_digit()) {
                    ends.push((j, chars.len()));
                }
            } else if c == b' '
                && j + 1 < b.len()
                && (b[j + 1].is_ascii_uppercase() || b[j + 1].is_ascii_digit())
            {
                j += 1;
            } else {
                break;
            }
        }
        if chars.len() == 34 {
            ends.push((j, 34));
        }
        let found = ends
            .iter()
            .rev()
            .find(|&&(e, n)| word_end(b, e) && iban_valid(&chars[..n]));
        if let Some(&(e, _)) = found {
            out.push(Match {
                kind: Kind::Iban,
                start: i,
                end: e,
            });
            floor = e;
        } else {
            floor = i + 1;
        }
    }
}

// ---------------------------------------------------------------------------------- IP

fn ips(text: &str, starts: &[usize], out: &mut Vec<Match>) {
    let b = text.as_bytes();
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }

        let c = b[i];
        let hexish = c.is_ascii_hexdigit() || c == b':';
        if !hexish || !word_start(b, i) || (i > 0 && matches!(b[i - 1], b'.' | b':' | b'-')) {
            floor = i + 1;
            continue;
        }
        // An address has a '.' or ':' within its first five bytes; most words do not.
        if !b[i..b.len().min(i + 5)]
            .iter()
            .any(|&c| c == b'.' || c == b':')
        {
            floor = i + 1;
            continue;
        }
        let mut e = i;
        while e < b.len() && (b[e].is_ascii_hexdigit() || matches!(b[e], b':' | b'.')) {
            e += 1;
        }
        while e > i && b[e - 1] == b'.' {
            e -= 1;
        }
        // Words like "about" or "face": no separator, no address.
        if !b[i..e].iter().any(|&c| c == b'.' || c == b':') {
            floor = e.max(i + 1);
            continue;
        }
        // Trailing ':' (sentence punctuation) is allowed once for "host: 10.0.0.1:" style.
        let mut cand = &text[i..e];
        if cand.ends_with(':') && !cand.ends_with("::") {
            cand = &cand[..cand.len() - 1];
        }
        let ok_end = word_end(b, e) && !(e < b.len() && b[e] == b'-');
        let colons = cand.bytes().filter(|&c| c == b':').count();
        let is_ip = ok_end
            && if colons >= 2 {
                cand.parse::<std::net::Ipv6Addr>().is_ok() && cand.len() >= 3
            } else if colons == 0 {
                ipv4(cand) && !version_context(b, i)
            } else {
                // "10.0.0.1:8080": IPv4 with a port.
                cand.split_once(':')
                    .is_some_and(|(h, p)| ipv4(h) && p.bytes().all(|c| c.is_ascii_digit()))
                    && !version_context(b, i)
            };
        if is_ip {
            let end = i + cand
                .split_once(':')
                .filter(|_| colons == 1)
                .map_or(cand.len(), |(h, _)| h.len());
            out.push(Match {
                kind: Kind::Ip,
                start: i,
                end,
            });
        }
        floor = e.max(i + 1);
    }
}

fn ipv4(s: &str) -> bool {
    let mut n = 0;
    for part in s.split('.') {
        n += 1;
        if part.is_empty()
            || part.len() > 3
            || !part.bytes().all(|c| c.is_ascii_digit())
            || (part.len() > 1 && part.starts_with('0'))
            || part.parse::<u16>().map_or(true, |v| v > 255)
        {
            return false;
        }
    }
    n == 4
}

/// "v1.2.3.4", "version 1.2.3.4", "build 10.0.19041.1": a version, not an address.
fn version_context(b: &[u8], i: usize) -> bool {
    if i > 0 && matches!(b[i - 1], b'v' | b'V') {
        return true;
    }
    // The word before, skipping spaces and ':'.
    let mut e = i;
    while e > 0 && matches!(b[e - 1], b' ' | b':' | b'=') {
        e -= 1;
    }
    let mut s = e;
    while s > 0 && b[s - 1].is_ascii_alphabetic() {
        s -= 1;
    }
    let word = &b[s..e];
    [
        "version", "ver", "build", "release", "v", "chapter", "section",
    ]
    .iter()
    .any(|w| word.eq_ignore_ascii_case(w.as_bytes()))
}

// ---------------------------------------------------------------------------------- phones

fn phones(b: &[u8], starts: &[usize], out: &mut Vec<Match>) {
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }

        let c = b[i];
        let starts = (c == b'+' && i + 1 < b.len() && b[i + 1].is_ascii_digit())
            || (c == b'(' && i + 1 < b.len() && b[i + 1].is_ascii_digit())
            || c.is_ascii_digit();
        let before_ok = i == 0
            || !(is_alnum(b[i - 1]) || matches!(b[i - 1], b'+' | b'-' | b'.' | b'/' | b'_' | b':'));
        if !starts || !before_ok {
            floor = i + 1;
            continue;
        }
        // Consume digits and single separators (" ", "-", ".", "(", ")"; ") " counts as one).
        let mut j = if c == b'+' { i + 1 } else { i };
        // No allocation: this runs at every number in the text.
        let mut groups = [0usize; 8];
        let mut ng = 0;
        let mut cur = 0usize;
        let mut last_digit_end = j;
        let mut seps_in_a_row = 0;
        // Separators count only once a digit follows them.
        let (mut dots, mut others, mut pend_dots, mut pend_others) = (0, 0, 0, 0);
        while j < b.len() {
            let d = b[j];
            if d.is_ascii_digit() {
                cur += 1;
                seps_in_a_row = 0;
                last_digit_end = j + 1;
                dots += pend_dots;
                others += pend_others;
                (pend_dots, pend_others) = (0, 0);
            } else if matches!(d, b' ' | b'-' | b'.' | b'(' | b')') {
                seps_in_a_row += 1;
                if seps_in_a_row > 2 || (d == b'.' && seps_in_a_row > 1) {
                    break;
                }
                if cur > 0 {
                    if ng == groups.len() {
                        break;
                    }
                    groups[ng] = cur;
                    ng += 1;
                    cur = 0;
                }
                if d == b'.' {
                    pend_dots += 1;
                } else if d != b' ' {
                    pend_others += 1;
                }
            } else {
                break;
            }
            j += 1;
        }
        if cur > 0 && ng < groups.len() {
            groups[ng] = cur;
            ng += 1;
        }
        let groups = &groups[..ng];
        let e = last_digit_end;
        let digits: usize = groups.iter().sum();
        let ok_end = word_end(b, e)
            && !(e + 1 < b.len()
                && matches!(b[e], b'.' | b'-' | b':')
                && b[e + 1].is_ascii_digit());
        let is_phone = ok_end
            && if c == b'+' {
                (8..=15).contains(&digits) && groups.len() >= 2 && groups.iter().all(|&g| g <= 8)
                    || (groups.len() == 1 && (10..=15).contains(&digits))
            } else {
                let g = groups;
                let paren = c == b'(';
                let nanp = g == [3, 3, 4] || (g == [1, 3, 3, 4] && b[i] == b'1');
                let mixed = dots > 0 && others > 0;
                nanp && !mixed && (paren || dots + others > 0 || g == [3, 3, 4])
            };
        if is_phone {
            out.push(Match {
                kind: Kind::Phone,
                start: i,
                end: e,
            });
            floor = e;
        } else {
            floor = j.max(i + 1);
        }
    }
}

// ---------------------------------------------------------------------------------- secrets

/// Known key prefixes and the least number of key characters that must follow.
const PREFIXES: &[(&[u8], usize)] = &[
    (b"sk-ant-", 20),
    (b"sk-proj-", 20),
    (b"sk-", 20),
    (b"sk_live_", 16),
    (b"sk_test_", 16),
    (b"rk_live_", 16),
    (b"AKIA", 16),
    (b"ASIA", 16),
    (b"ghp_", 30),
    (b"gho_", 30),
    (b"ghu_", 30),
    (b"ghs_", 30),
    (b"ghr_", 30),
    (b"github_pat_", 30),
    (b"glpat-", 20),
    (b"xoxb-", 10),
    (b"xoxp-", 10),
    (b"xoxa-", 10),
    (b"xoxr-", 10),
    (b"xoxs-", 10),
    (b"AIza", 30),
    (b"hf_", 30),
    (b"npm_", 30),
];

fn key_char(c: u8) -> bool {
    is_alnum(c) || matches!(c, b'_' | b'-')
}

fn token_char(c: u8) -> bool {
    CLASS[usize::from(c)] & TOKEN != 0
}

fn secrets(b: &[u8], starts: &[usize], high_entropy: bool, out: &mut Vec<Match>) {
    let start_len = out.len();
    private_keys(b, out);
    let mut floor = 0;
    for &i in starts {
        if i < floor {
            continue;
        }

        let c = b[i];
        // Private key blocks were found above; skip over them.
        if out.len() > start_len
            && let Some(m) = out[start_len..].iter().find(|m| m.start <= i && i < m.end)
        {
            floor = m.end;
            continue;
        }
        if !is_alnum(c) || !word_start(b, i) {
            floor = i + 1;
            continue;
        }
        // Short words (most of any text) cannot be secrets; "Bearer" is checked below.
        let mut w = i;
        while w < b.len() && token_char(b[w]) {
            w += 1;
        }
        if w - i < 14 && !(w - i == 6 && b[i..w].eq_ignore_ascii_case(b"bearer")) {
            floor = w;
            continue;
        }
        // Bearer tokens.
        if (c == b'B' || c == b'b')
            && b.len() - i > 7
            && b[i..i + 7].eq_ignore_ascii_case(b"bearer ")
        {
            let s = i + 7;
            let mut e = s;
            while e < b.len() && (token_char(b[e]) || matches!(b[e], b'.' | b'~')) {
                e += 1;
            }
            if e - s >= 16 {
                out.push(Match {
                    kind: Kind::Secret,
                    start: s,
                    end: e,
                });
                floor = e;
                continue;
            }
        }
        // JWTs.
        if b[i..].starts_with(b"eyJ") {
            let mut e = i;
            let mut dots = 0;
            while e < b.len() && (key_char(b[e]) || b[e] == b'.') {
                dots += usize::from(b[e] == b'.');
                e += 1;
            }
            if dots >= 2 && e - i >= 30 {
                out.push(Match {
                    kind: Kind::Secret,
                    start: i,
                    end: e,
                });
                floor = e;
                continue;
            }
        }
        // Known prefixes.
        let mut hit = None;
        for &(p, min) in PREFIXES {
            if b[i..].starts_with(p) {
                let s = i + p.len();
                let mut e = s;
                while e < b.len() && key_char(b[e]) {
                    e += 1;
                }
                let body = &b[s..e];
                let upper_only = p == b"AKIA" || p == b"ASIA";
                let ok = body.len() >= min
                    && (!upper_only
                        || body[..16]
                            .iter()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
                    && body.iter().any(u8::is_ascii_digit)
                    && word_end(b, e);
                if ok {
                    hit = Some(e);
                }
                break;
            }
        }
        if let Some(e) = hit {
            out.push(Match {
                kind: Kind::Secret,
                start: i,
                end: e,
            });
            floor = e;
            continue;
        }
        // High-entropy tokens.
        let mut e = i;
        while e < b.len() && token_char(b[e]) {
            e += 1;
        }
        let in_address = e < b.len()
            && (b[e] == b'@' || (b[e] == b'.' && e + 1 < b.len() && is_alnum(b[e + 1])));
        if high_entropy && !in_address {
            let tok = &b[i..e];
            // Base64 padding.
            while e < b.len() && b[e] == b'=' && e - i < tok.len() + 2 {
                e += 1;
            }
            if random_looking(tok) {
                out.push(Match {
                    kind: Kind::Secret,
                    start: i,
                    end: e,
                });
            }
        }
        floor = e.max(i + 1);
    }
}

/// At least 20 characters mixing upper case, lower case and digits with high Shannon entropy.
/// Hex-only strings (hashes, UUIDs) and identifiers made of words do not pass.
pub fn random_looking(tok: &[u8]) -> bool {
    if tok.len() < 20 || tok.len() > 512 {
        return false;
    }
    let (mut up, mut low, mut dig) = (0, 0, 0);
    let mut counts = [0u16; 128];
    let mut lower_run = 0;
    let mut max_lower_run = 0;
    for &c in tok {
        if c.is_ascii_uppercase() {
            up += 1;
        } else if c.is_ascii_lowercase() {
            low += 1;
        } else if c.is_ascii_digit() {
            dig += 1;
        }
        if c.is_ascii_lowercase() {
            lower_run += 1;
            max_lower_run = max_lower_run.max(lower_run);
        } else {
            lower_run = 0;
        }
        counts[usize::from(c & 0x7f)] += 1;
    }
    if up < 2 || low < 2 || max_lower_run > 8 {
        return false;
    }
    if dig < 2 {
        // Few digits: still random if vowels are as rare as in random letters (about 1 in 5),
        // unlike identifiers made of words (about 2 in 5).
        let vowels = tok.iter().filter(|c| b"aeiouAEIOU".contains(c)).count();
        if tok.len() < 24 || vowels * 4 > up + low {
            return false;
        }
    }
    let n = tok.len() as f32;
    let h: f32 = counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = f32::from(k) / n;
            -p * p.log2()
        })
        .sum();
    // A random string of length n over 62 symbols has entropy close to log2(min(n, 62)).
    let expect = n.min(62.0).log2();
    h >= (expect - 0.9).min(4.0)
}

fn private_keys(b: &[u8], out: &mut Vec<Match>) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut i = 0;
    while i + BEGIN.len() <= b.len() {
        let Some(off) = find(&b[i..], BEGIN) else {
            return;
        };
        let s = i + off;
        let line_end = find(&b[s..], b"\n").map_or(b.len(), |k| s + k);
        let header = &b[s..line_end];
        if !(contains(header, b"PRIVATE KEY-----")) {
            i = s + BEGIN.len();
            continue;
        }
        let e = match find(&b[s..], b"-----END ") {
            Some(k) => {
                let after = s + k + 9;
                match find(&b[after..], b"-----") {
                    Some(k2) => after + k2 + 5,
                    None => b.len(),
                }
            }
            None => b.len(),
        };
        out.push(Match {
            kind: Kind::Secret,
            start: s,
            end: e,
        });
        i = e;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = 0;
    while let Some(p) = hay[i..].iter().position(|&c| c == first) {
        let at = i + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<(Kind, &str)> {
        scan(t, &Detectors::default())
            .into_iter()
            .map(|m| (m.kind, &t[m.start..m.end]))
            .collect()
    }

    #[test]
    fn basics() {
        assert_eq!(
            kinds("mail jane.doe@example.co.uk."),
            [(Kind::Email, "jane.doe@example.co.uk")]
        );
        assert_eq!(
            kinds("card 4111 1111 1111 1111 ok"),
            [(Kind::Card, "4111 1111 1111 1111")]
        );
        assert_eq!(kinds("ssn 123-45-6789"), [(Kind::Ssn, "123-45-6789")]);
        assert_eq!(
            kinds("call +44 20 7946 0958 now"),
            [(Kind::Phone, "+44 20 7946 0958")]
        );
        assert_eq!(
            kinds("call (415) 555-0100"),
            [(Kind::Phone, "(415) 555-0100")]
        );
        assert_eq!(
            kinds("iban DE89 3704 0044 0532 0130 00 ok"),
            [(Kind::Iban, "DE89 3704 0044 0532 0130 00")]
        );
        assert_eq!(
            kinds("host 192.168.1.20:8080"),
            [(Kind::Ip, "192.168.1.20")]
        );
        assert_eq!(
            kinds("v6 2001:db8::8a2e:370:7334."),
            [(Kind::Ip, "2001:db8::8a2e:370:7334")]
        );
        assert_eq!(
            kinds("key sk-ant-api03-abcdefghijklmnop1234"),
            [(Kind::Secret, "sk-ant-api03-abcdefghijklmnop1234")]
        );
        assert_eq!(
            kinds("AKIAIOSFODNN7EXAMPLE"),
            [(Kind::Secret, "AKIAIOSFODNN7EXAMPLE")]
        );
        assert_eq!(
            kinds("Authorization: Bearer abcdefghijklmnopqrstuvwx"),
            [(Kind::Secret, "abcdefghijklmnopqrstuvwx")]
        );
    }

    #[test]
    fn random_input_never_panics_and_matches_are_in_bounds() {
        let alphabet: Vec<char> = "0123456789 -.+():@_/=abcdefXYZAKIsk-\néü€🙂BEGIN[]"
            .chars()
            .collect();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut t = String::new();
            for _ in 0..(seed % 80) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                t.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            for m in scan(&t, &Detectors::default()) {
                assert!(m.start < m.end && m.end <= t.len(), "{t:?}");
                assert!(
                    t.is_char_boundary(m.start) && t.is_char_boundary(m.end),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn negatives() {
        for t in [
            "order 1234567890123456",
            "ISBN 978-3-16-148410-0",
            "on 2024-01-15 at 10:30:00",
            "version 1.2.3.4",
            "id 550e8400-e29b-41d4-a716-446655440000",
            "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "std::vector<int>",
            "getUserAccountBalance2Handler",
        ] {
            assert!(kinds(t).is_empty(), "{t}: {:?}", kinds(t));
        }
    }
}
