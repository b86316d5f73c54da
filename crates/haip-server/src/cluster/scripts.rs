//! The Lua scripts that keep sessions in Redis. Each runs atomically, so an append, a
//! takeover and a forward never interleave: a takeover bumps the session's epoch, and an
//! append of an older epoch is refused whole.
//!
//! Keys of one session share the hash tag `{<session>}`, so a script touches one slot of
//! a Redis Cluster:
//! - `haip:{S}:meta` (hash): subject, owner (node run), epoch, seq (last stored), in (last
//!   client seq processed), runs (JSON), hai (the client's HAI envelope), applied (per
//!   producing node, the last forwarded output applied), texts (user messages being
//!   assembled), ended.
//! - `haip:{S}:out` (stream): the sent messages, entry id `<seq>-0`, fields `t` (ts) and
//!   `j` (the JSON text as sent).
//! - `haip:{S}:fwd` (list): output and client messages other nodes forward to the node
//!   that drives the session, oldest first, until it takes them.
//!
//! Node runs announce themselves with `haip:node:<owner>` (a key that expires unless
//! refreshed) and listen on the pub/sub channel of the same name.

use redis::Script;

pub fn meta_key(session: &str) -> String {
    format!("haip:{{{session}}}:meta")
}

pub fn out_key(session: &str) -> String {
    format!("haip:{{{session}}}:out")
}

pub fn forwarded_key(session: &str) -> String {
    format!("haip:{{{session}}}:fwd")
}

/// The liveness key of a node run, and the pub/sub channel it listens on.
pub fn node_key(owner: &str) -> String {
    format!("haip:node:{owner}")
}

/// Appends a batch of a session's messages with the seqs the writer gave them, after
/// checking that the writer drives the session (its epoch) and that the seqs follow the
/// stored ones; records the client seq processed, the runs and the client's HAI; trims
/// the stream by the replay window's rules; renews the session's expiry.
///
/// KEYS: meta, out. ARGV: epoch, subject, owner, ttl_ms, keep_newest, keep_for_ms,
/// max_messages, now_ms, last_client_seq|'', runs|'', hai|'', ended '1'|'', applied|'',
/// texts|'', first_seq, then ts and json of each message.
/// Returns {'ok', last stored seq} or {'moved', epoch}.
pub const APPEND: &str = r#"
local meta, out = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  if ARGV[1] ~= '1' or ARGV[15] ~= '1' then return {'moved', ''} end
  redis.call('HSET', meta, 'subject', ARGV[2], 'owner', ARGV[3], 'epoch', '1', 'seq', '0')
  epoch = '1'
end
if epoch ~= ARGV[1] then return {'moved', epoch} end
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local n = (#ARGV - 15) / 2
if n > 0 then
  local first = tonumber(ARGV[15])
  if first ~= seq + 1 then return {'moved', epoch} end
  for i = 0, n - 1 do
    redis.call('XADD', out, string.format('%.0f', first + i) .. '-0',
      't', ARGV[16 + 2 * i], 'j', ARGV[17 + 2 * i])
  end
  seq = first + n - 1
  redis.call('HSET', meta, 'seq', string.format('%.0f', seq))
end
if ARGV[9] ~= '' then redis.call('HSET', meta, 'in', ARGV[9]) end
if ARGV[10] ~= '' then redis.call('HSET', meta, 'runs', ARGV[10]) end
if ARGV[11] ~= '' then redis.call('HSET', meta, 'hai', ARGV[11]) end
if ARGV[12] == '1' then redis.call('HSET', meta, 'ended', '1') end
if ARGV[13] ~= '' then redis.call('HSET', meta, 'applied', ARGV[13]) end
if ARGV[14] ~= '' then redis.call('HSET', meta, 'texts', ARGV[14]) end
local len = redis.call('XLEN', out)
local keep_newest = tonumber(ARGV[5])
if len > keep_newest then
  local keep_for, max_messages, now = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local over_cap = len - max_messages
  local oldest = redis.call('XRANGE', out, '-', '+', 'COUNT', math.min(len - keep_newest, 256))
  local cut = nil
  for i, entry in ipairs(oldest) do
    if i <= over_cap or now - tonumber(entry[2][2]) > keep_for then
      cut = entry[1]
    else
      break
    end
  end
  if cut then
    local cut_seq = tonumber(string.match(cut, '^(%d+)'))
    redis.call('XTRIM', out, 'MINID', string.format('%.0f', cut_seq + 1) .. '-0')
  end
end
redis.call('PEXPIRE', meta, ARGV[4])
redis.call('PEXPIRE', out, ARGV[4])
return {'ok', string.format('%.0f', seq)}
"#;

/// Makes a node run the owner of a session, in a new epoch, and returns what is kept of
/// it, with what was forwarded to it while no live node drove it (taken off the list).
///
/// KEYS: meta, out, fwd. ARGV: subject ('' for any), owner, ttl_ms.
/// Returns {'ok', previous owner, epoch, seq, in, runs, hai, subject, entries,
/// forwarded, applied, texts} or {'unknown'} / {'not_yours'} / {'ended'}.
pub const CLAIM: &str = r#"
local meta = KEYS[1]
local subject = redis.call('HGET', meta, 'subject')
if not subject then return {'unknown'} end
if ARGV[1] ~= '' and subject ~= ARGV[1] then return {'not_yours'} end
if redis.call('HGET', meta, 'ended') == '1' then return {'ended'} end
local previous = redis.call('HGET', meta, 'owner') or ''
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
redis.call('HSET', meta, 'owner', ARGV[2])
local f = redis.call('HMGET', meta, 'seq', 'in', 'runs', 'hai', 'applied', 'texts')
local entries = redis.call('XRANGE', KEYS[2], '-', '+')
local forwarded = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', meta, ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok', previous, tostring(epoch), f[1] or '0', f[2] or '', f[3] or '', f[4] or '',
  subject, entries, forwarded, f[5] or '', f[6] or ''}
"#;

/// Queues an item for a session (after checking its subject) and wakes the node run
/// that drives it, which takes the queue with [`DRAIN`]. A session no live node drives
/// keeps its queue (at most `max_kept` items) for the next one that claims it.
///
/// KEYS: meta, fwd. ARGV: subject ('' for any), item, ttl_ms, max_kept, wake message.
/// Returns 'ok', 'unknown' or 'not_yours'.
pub const FORWARD: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'subject', 'owner')
if not f[1] then return 'unknown' end
if ARGV[1] ~= '' and f[1] ~= ARGV[1] then return 'not_yours' end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[4]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if f[2] then redis.call('PUBLISH', 'haip:node:' .. f[2], ARGV[5]) end
return 'ok'
"#;

/// Takes a session's queue, if `owner` drives the session.
///
/// KEYS: meta, fwd. ARGV: owner. Returns the items, oldest first.
pub const DRAIN: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {} end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return items
"#;

/// The scripts, hashed once.
pub struct Scripts {
    pub append: Script,
    pub claim: Script,
    pub forward: Script,
    pub drain: Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            append: Script::new(APPEND),
            claim: Script::new(CLAIM),
            forward: Script::new(FORWARD),
            drain: Script::new(DRAIN),
        }
    }
}
