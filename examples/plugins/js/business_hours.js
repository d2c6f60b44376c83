// business-hours: a Palisade policy plugin in JavaScript.
//
// Holds risky calls for human approval outside business hours; inside them they go on. `risky`
// matches tool names (`server__tool`) for tool calls and model aliases for LLM calls.
//
// Config (`palisade.toml`):
//
//   [[plugins]]
//   name = "business-hours"
//   path = "dist/plugins/business-hours-js.wasm"
//   memory_mb = 64          # a JavaScript engine needs more than a Rust plugin
//   deadline_ms = 200
//   [plugins.config]
//   risky = ["payments__*", "*__delete_*", "gpt-4o"]  # tools or models ("*" globs)
//   days = ["mon", "tue", "wed", "thu", "fri"] # business days (default: Monday to Friday)
//   open = "09:00"                             # local time, inclusive (default 09:00)
//   close = "17:00"                            # local time, exclusive (default 17:00)
//   utc_offset_minutes = 60                    # local time = UTC + this (default 0)
//   group = "oncall"                           # who approves (default "oncall")
//   approvals = 1
//   ttl_secs = 3600
//
// Built with `componentize-js` against `wit/` (see `make plugins-js`). The clock is the host's
// `now-ms` import: the component is built with every WASI feature disabled.

import { declareStateless, log, nowMs } from 'palisade:policy/host@0.1.2';

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const KEYS = ['risky', 'days', 'open', 'close', 'utc_offset_minutes', 'group', 'approvals', 'ttl_secs'];

// What `init` parsed: all the plugin keeps, so `init` declares it stateless and the gateway
// reuses an instance for later calls, one at a time (a fresh JavaScript instance costs about a
// millisecond).
let rules = null;

function fail(message) {
  // A thrown string becomes the `err` of `init`'s result: the gateway rejects the plugin.
  throw `business-hours config: ${message}`;
}

function minutesOf(text, key) {
  const m = /^(\d{1,2}):(\d{2})$/.exec(text);
  if (!m || Number(m[1]) > 24 || Number(m[2]) > 59 || (Number(m[1]) === 24 && m[2] !== '00')) {
    fail(`\`${key}\` must be a time like "09:00", got ${JSON.stringify(text)}`);
  }
  return Number(m[1]) * 60 + Number(m[2]);
}

function glob(pattern, text) {
  const re = new RegExp('^' + pattern.split('*').map((p) => p.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*') + '$');
  return re.test(text);
}

function parseConfig(json) {
  let c;
  try {
    c = JSON.parse(json || '{}');
  } catch (e) {
    fail(`not JSON: ${e.message}`);
  }
  if (c === null || typeof c !== 'object' || Array.isArray(c)) fail('must be a table');
  const unknown = Object.keys(c).filter((k) => !KEYS.includes(k));
  if (unknown.length) fail(`unknown key(s) ${unknown.join(', ')}; expected ${KEYS.join(', ')}`);
  const risky = c.risky;
  if (!Array.isArray(risky) || risky.length === 0 || !risky.every((r) => typeof r === 'string' && r)) {
    fail('`risky` must be a non-empty list of tool or model name patterns');
  }
  const days = c.days ?? ['mon', 'tue', 'wed', 'thu', 'fri'];
  if (!Array.isArray(days) || !days.every((d) => DAYS.includes(d))) {
    fail(`\`days\` must list days among ${DAYS.join(', ')}`);
  }
  const open = minutesOf(c.open ?? '09:00', 'open');
  const close = minutesOf(c.close ?? '17:00', 'close');
  if (close <= open) fail('`close` must be after `open`');
  const offset = c.utc_offset_minutes ?? 0;
  if (!Number.isInteger(offset) || Math.abs(offset) > 14 * 60) {
    fail('`utc_offset_minutes` must be an integer within ±840');
  }
  const approvals = c.approvals ?? 1;
  if (!Number.isInteger(approvals) || approvals < 1 || approvals > 255) fail('`approvals` must be 1..255');
  const ttl = c.ttl_secs ?? 3600;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > 0xffffffff) fail('`ttl_secs` must be a positive integer');
  const group = c.group ?? 'oncall';
  if (typeof group !== 'string' || !group) fail('`group` must be a non-empty string');
  return { risky, days: new Set(days), open, close, offset, approvals, ttl, group, text: `${c.open ?? '09:00'}-${c.close ?? '17:00'}` };
}

// Whether the instant `ms` (Unix epoch milliseconds, UTC) falls in business hours.
function inHours(ms) {
  const local = new Date(ms + rules.offset * 60_000);
  const day = DAYS[local.getUTCDay()];
  const minute = local.getUTCHours() * 60 + local.getUTCMinutes();
  return { open: rules.days.has(day) && minute >= rules.open && minute < rules.close, day, minute };
}

const allow = (annotations = []) => ({ verdict: { tag: 'allow' }, annotations });

export const policy = {
  init(configJson) {
    rules = parseConfig(configJson);
    declareStateless();
    return { onRequest: true };
  },

  onRequest(call) {
    if (call.kind === 'tool-list') return allow();
    const rule = rules.risky.find((p) => glob(p, call.target));
    if (!rule) return allow();
    const now = inHours(Number(nowMs()));
    const hhmm = `${String(Math.floor(now.minute / 60)).padStart(2, '0')}:${String(now.minute % 60).padStart(2, '0')}`;
    if (now.open) return allow([['business-hours.rule', rule]]);
    log('info', `holding ${call.target} for agent ${call.agent.id}: ${now.day} ${hhmm} is outside business hours`);
    return {
      verdict: {
        tag: 'hold',
        val: {
          rule: 'business-hours',
          approvals: rules.approvals,
          group: rules.group,
          ttlSecs: rules.ttl,
          summary: `${call.agent.id} calls ${call.target} outside business hours (${now.day} ${hhmm} local, open ${rules.text})`,
        },
      },
      annotations: [['business-hours.rule', rule]],
    };
  },

  onResponse(_call, _body) {
    return allow();
  },

  onText(_call, delta, _last) {
    return delta;
  },

  onComplete(_call, _usage, _status) {},

  filterTools(_call, tools) {
    return tools.map((t) => t.name);
  },
};
