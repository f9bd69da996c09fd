"""The server-side Lua scripts: the one atomic step of each write and read.

They are plain Lua (Redis 6.2 has no functions), run with EVALSHA and
re-loaded on NOSCRIPT (or, pipelined, with EVAL). Their KEYS/ARGV are the
contract another language uses to be a writer or a reader; each constant's
docstring states it.

Redis Cluster: the write scripts get every key the client can compute in KEYS
(row hashes, live ids, stream, index counts, event counter); the index keys
come inside the entries (the new ones from the client, the old ones from the
row's stored `ix`), and READ builds row keys from a prefix. All of them belong
to one (tenant, entity), and in their cluster form (`Keys(cluster=True)`;
docs/redis.md#redis-cluster) they and the partition's stream and event counter share the
partition's hash tag, so each call touches one slot (keys not in KEYS are
then in the slot of those that are, which Redis Cluster allows).

Index layout (`_index`): one sorted set per indexed column — a sortable
column's sort index, else a filter index — so a batch of new rows costs one
ZADD per column, whatever the values. Value sets (kind `v`) are what earlier
versions wrote: the scripts still apply such entries (and remove them when a
row stored with them changes), the Python writer no longer sends them.
"""

from __future__ import annotations

__all__ = (
    "HEARTBEAT",
    "LIVE_MEMBERS",
    "READ",
    "SOURCE_APPLY",
    "SOURCE_SWEEP",
    "STREAM_HEAD",
    "WRITE",
    "WRITE_MANY",
)

_WRITE_FN = r"""
local call = redis.call
-- Set by the caller below: the call's fixed keys and arguments.
local ids_key, stream_key, counts_key, seq_key, tenant, entity, maxlen
-- Index changes of the whole call, applied once by `finish`: per value set,
-- id -> true (add) | false (remove); per sorted set, member -> score | false;
-- per count field, the sum of its +1/-1. The last change of a (key, member)
-- wins, which leaves exactly the state the row-by-row changes leave.
local sets, zsets, counts = {}, {}, {}
local function mark(kind, key, x, id, on)
  if kind == 'v' then
    local s = sets[key]
    if not s then s = {}; sets[key] = s end
    s[id] = on
    counts[x] = (counts[x] or 0) + (on and 1 or -1)
  else
    local z = zsets[key]
    if not z then z = {}; zsets[key] = z end
    if kind == 'n' then z[id] = on and x else z[x] = on and '0' end
  end
end
-- Entries in the earlier form, `<kind><length>:<key><length>:<x>` each.
local function legacy_entries(blob)
  local out, pos, find, sub = {}, 1, string.find, string.sub
  while pos <= #blob do
    local c = find(blob, ':', pos + 1, true)
    local key_end = c + tonumber(sub(blob, pos + 1, c - 1))
    local c2 = find(blob, ':', key_end + 1, true)
    local stop = c2 + tonumber(sub(blob, key_end + 1, c2 - 1))
    out[#out + 1] = sub(blob, pos, pos)
    out[#out + 1] = sub(blob, c + 1, key_end)
    out[#out + 1] = sub(blob, c2 + 1, stop)
    pos = stop + 1
  end
  return out
end
-- A row's entries: {kind, key, x, kind, key, x, ...}.
local function entries(blob)
  if blob == '' then return {} end
  -- A kind letter (< 0x80) starts the earlier form; a MessagePack array never does.
  if string.byte(blob, 1) < 128 then return legacy_entries(blob) end
  return cmsgpack.unpack(blob)
end
local function mark_all(e, id, on)
  for i = 1, #e, 3 do mark(e[i], e[i + 1], e[i + 2], id, on) end
end
-- Mark the entries of `e` that `other` lacks.
local function mark_missing(e, other, id, on)
  local has = {}
  for i = 1, #other, 3 do
    local xs = has[other[i + 1]]
    if not xs then xs = {}; has[other[i + 1]] = xs end
    xs[other[i + 2]] = true
  end
  for i = 1, #e, 3 do
    local xs = has[e[i + 1]]
    if not (xs and xs[e[i + 2]]) then mark(e[i], e[i + 1], e[i + 2], id, on) end
  end
end
local t = call('TIME')
-- Numbers are passed to commands as strings made once (Lua formats a number each time).
local now_ms = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local n -- the partition's event counter (read at the call's first event)
-- Mark the index changes of a row going from `old_blob` (false: none) to `new_blob`
-- entries; `adds` false: only the removals (the caller adds the new entries itself).
local function reindex(old_blob, new_blob, agg_id, adds)
  -- Only entries that changed are touched: an update of unindexed columns costs nothing.
  if old_blob == new_blob or not (old_blob or adds) then return end
  local old = entries(old_blob or '')
  if #old == 0 and not adds then return end
  local new = entries(new_blob)
  if #old == 0 then
    mark_all(new, agg_id, true)
  elseif #new == 0 then
    mark_all(old, agg_id, false)
  else
    mark_missing(old, new, agg_id, false)
    if adds then mark_missing(new, old, agg_id, true) end
  end
end
-- A call first reads and plans, then checks every key it is about to write
-- (`check_types`), and only then writes (`commit`, `finish`): a call that fails
-- (a key of another type, a corrupt counter) fails before it wrote anything.
-- Row states as the call's planned writes leave them (an id written twice in
-- one call meets its first write), read with HMGET on first use.
local states = {}
local function state_of(row_key)
  local s = states[row_key]
  if not s then s = call('HMGET', row_key, 'v', 'ix'); states[row_key] = s end
  return s
end
-- The planned writes, in order: {row key, op, version, id, row, entries, event number}.
local planned = {}
-- The partition's event counter (a call that cannot read it writes nothing).
local function read_seq()
  local t = call('TYPE', seq_key)['ok']
  local x = (t == 'none' and 0) or (t == 'string' and tonumber(call('GET', seq_key)))
  if not x then error(seq_key .. ' holds no event counter (a ' .. t .. '); nothing written') end
  return x
end
-- Plan one write of a row whose state is `cur` (its HMGET v ix); `adds` as in
-- reindex. Returns status (`ok` | `conflict` | `noop`) and version.
local function write(row_key, cur, op, expected, agg_id, row, new_blob, adds)
  local version = tonumber(cur[1] or '0')
  if expected ~= '' and tonumber(expected) ~= version then
    return 'conflict', version
  end
  -- A live row always has `ix` (possibly empty); a deleted one keeps only `v`.
  if op == 'delete' and not cur[2] then
    return 'noop', version
  end
  if op == 'delete' then new_blob = '' end
  reindex(cur[2], new_blob, agg_id, adds)
  version = version + 1
  local v = tostring(version)
  if not n then n = read_seq() end
  n = n + 1
  local live = zsets[ids_key]
  if not live then live = {}; zsets[ids_key] = live end
  live[agg_id] = op ~= 'delete' and '0'
  planned[#planned + 1] = {row_key, op, v, agg_id, row, new_blob, n}
  states[row_key] = {v, op ~= 'delete' and new_blob}
  return 'ok', version
end
-- An error message if a key the call writes holds another type than its
-- commands need (`extra`: more sorted sets), else nil.
local function check_types(extra)
  local want = {[ids_key] = 'zset', [stream_key] = 'stream', [counts_key] = 'hash',
    [seq_key] = 'string'}
  for key in pairs(zsets) do want[key] = 'zset' end
  for key in pairs(sets) do want[key] = 'set' end
  for _, key in ipairs(extra or {}) do want[key] = 'zset' end
  for key, t in pairs(want) do
    local got = call('TYPE', key)['ok']
    if got ~= 'none' and got ~= t then
      return 'WRONGTYPE ' .. key .. ' holds a ' .. got .. ', not a ' .. t .. '; nothing written'
    end
  end
  return nil
end
-- Make the planned writes: each row's hash and its event. Returns the stream ids.
local function commit()
  local sids = {}
  for i, w in ipairs(planned) do
    local row_key, op, v, agg_id, row, blob, en = w[1], w[2], w[3], w[4], w[5], w[6], w[7]
    if op == 'delete' then
      call('HSET', row_key, 'v', v)
      call('HDEL', row_key, 'row', 'ix')
      sids[i] = call('XADD', stream_key, '*', 't', tenant, 'e', entity, 'id', agg_id,
        'v', v, 'op', 'delete', 'at', now_ms, 'n', en)
    else
      call('HSET', row_key, 'v', v, 'row', row, 'ix', blob)
      sids[i] = call('XADD', stream_key, '*', 't', tenant, 'e', entity, 'id', agg_id,
        'v', v, 'op', 'upsert', 'row', row, 'at', now_ms, 'n', en)
    end
  end
  return sids
end
-- Check the keys of the planned writes (`check_types`), then make them (`commit`).
-- Returns nil and the stream ids, or an error message with nothing written.
local function commit_checked()
  if #planned == 0 then return nil, {} end
  local err = check_types()
  if err then return err end
  return nil, commit()
end
-- `cmd key args…`, a few thousand arguments per call (Lua's stack bound).
local function bulk(cmd, key, args)
  for i = 1, #args, 4000 do
    call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end
-- Apply the call's index changes, store the event counter, trim the stream.
local function finish()
  for key, s in pairs(sets) do
    local adds, rems = {}, {}
    for m, on in pairs(s) do
      if on then adds[#adds + 1] = m else rems[#rems + 1] = m end
    end
    if #rems > 0 then bulk('SREM', key, rems) end
    if #adds > 0 then bulk('SADD', key, adds) end
  end
  for key, z in pairs(zsets) do
    local adds, rems = {}, {}
    for m, score in pairs(z) do
      if score then adds[#adds + 1] = score; adds[#adds + 1] = m else rems[#rems + 1] = m end
    end
    if #rems > 0 then bulk('ZREM', key, rems) end
    if #adds > 0 then bulk('ZADD', key, adds) end
  end
  for field, d in pairs(counts) do
    if d ~= 0 and call('HINCRBY', counts_key, field, d) <= 0 then
      call('HDEL', counts_key, field)
    end
  end
  if n then
    call('SET', seq_key, n)
    call('XTRIM', stream_key, 'MAXLEN', '~', maxlen)
  end
end
"""

WRITE = (
    _WRITE_FN
    + r"""
ids_key, stream_key, counts_key, seq_key = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
tenant, entity, maxlen = ARGV[3], ARGV[4], ARGV[7]
local status, version = write(KEYS[1], state_of(KEYS[1]), ARGV[1],
  ARGV[2], ARGV[5], ARGV[6], ARGV[8] or '', true)
local sid = ''
if status == 'ok' then
  local err, sids = commit_checked()
  if err then return redis.error_reply(err) end
  sid = sids[1]
  finish()
end
return {status, version, sid}
"""
)
"""Write one row (upsert or delete) and append its event, atomically.

KEYS: 1 row hash `Keys.row(t, e, id)`; 2 live-id sorted set `Keys.table(t, e)`;
3 partition stream `Keys.event_stream(partition_of(t, e))`; 4 index-count hash
`index_counts(t, e)`; 5 partition event counter `event_seq(p)`.

ARGV: 1 op `upsert`|`delete`; 2 expected version or `""` (none); 3 tenant;
4 entity; 5 id; 6 row JSON (`""` on delete); 7 stream MAXLEN (approximate);
8 the row's index entries (upsert only): a MessagePack array of strings, for
each entry its kind, key and `x` (`""`: no entries). The earlier form (per
entry the kind letter, then key and `x` each as `<byte length>:<bytes>`) is
still read, so rows stored by earlier versions update correctly. Kinds:

* `n` numeric sort index: ZADD key `x` (the score) id;
* `l` lexical index (a sort index or a filter index): ZADD key 0 `x` (the member);
* `v` value set (earlier versions): SADD key id, and HINCRBY the count hash
  field `x` (`v:{column}`).

(`_index.Layout` derives them from the entity's spec: one `n` or `l` entry
per indexed column.) The row hash keeps `v` (version, kept after a delete so
a re-insert continues from it), `row` (JSON) and `ix` (the entries string,
as sent), so the next write removes exactly the entries that changed
(whatever kinds and form they were written in); a live row always has `ix`.
The index keys are the only keys not passed in KEYS (the old ones are known
only from `ix`); every key of one (tenant, entity) is meant to share its
partition's hash tag on Redis Cluster.

Returns `{status, version, stream id}`: `ok` (written at `version`),
`conflict` (expected version differs; `version` is the current one, nothing
written) or `noop` (delete of a missing row; nothing written).

It checks before it writes: it reads the row and the event counter, then asks
the type of every key it is about to write (row hash, live ids, stream,
index-count hash, counter, each index key). A key that holds another type (a
stray key, or another tier's under an overlapping prefix) makes it return
an error reply naming the key, with nothing written; so does a counter that
is not a number. The event's
fields are `t e id v op row at n` (docs/redis.md#events); `n` is the partition's
event counter, by which a reader detects a trimmed gap. The stream is trimmed
(`XTRIM MAXLEN ~`) once per call, after its events.
"""

WRITE_MANY = (
    _WRITE_FN
    + r"""
ids_key, stream_key, counts_key, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
tenant, entity, maxlen = ARGV[1], ARGV[2], ARGV[3]
local nw = #KEYS - 4
local groups_at = 4 + 5 * nw -- the grouped entries, if given, start here
-- With grouped entries, read every row first: if the writes are upserts of distinct
-- ids and none conflicts, these are the states the writes meet, and the groups add
-- every new entry (a live row's dropped entries are still marked for removal).
local adds = true
if #ARGV >= groups_at then
  adds = false
  local seen = {}
  for i = 1, nw do
    local j = 4 + (i - 1) * 5
    local id, expected = ARGV[j + 2], ARGV[j + 1]
    local cur = state_of(KEYS[i + 4])
    if seen[id] or ARGV[j] ~= 'upsert' then adds = true; break end
    seen[id] = true
    if expected ~= '' and tonumber(expected) ~= tonumber(cur[1] or '0') then adds = true end
  end
end
local statuses, out = {}, {''}
if adds then
  for i = 1, nw do
    local j = 4 + (i - 1) * 5
    local status, version = write(KEYS[i + 4], state_of(KEYS[i + 4]), ARGV[j], ARGV[j + 1],
      ARGV[j + 2], ARGV[j + 3], ARGV[j + 4], adds)
    statuses[#statuses + 1] = string.sub(status, 1, 1)
    out[#out + 1] = version
  end
  local err = commit_checked()
  if err then return redis.error_reply(err) end
else
  -- `write`'s step for an upsert known to succeed, lean: it runs for every row.
  n = read_seq()
  local live, vs, groups = {}, {}, {}
  for i = 1, nw do
    local j = 4 + (i - 1) * 5
    local cur, agg_id, blob = states[KEYS[i + 4]], ARGV[j + 2], ARGV[j + 4]
    if cur[2] then reindex(cur[2], blob, agg_id, false) end
    local version = tonumber(cur[1] or '0') + 1
    vs[i] = tostring(version)
    live[2 * i - 1] = '0'; live[2 * i] = agg_id
    out[i + 1] = version
  end
  local i = groups_at
  while i <= #ARGV do
    groups[#groups + 1] = ARGV[i]
    i = i + 2 + 2 * tonumber(ARGV[i + 1])
  end
  local err = check_types(groups)
  if err then return redis.error_reply(err) end
  for i = 1, nw do
    local j = 4 + (i - 1) * 5
    local agg_id, row, v = ARGV[j + 2], ARGV[j + 3], vs[i]
    n = n + 1
    call('HSET', KEYS[i + 4], 'v', v, 'row', row, 'ix', ARGV[j + 4])
    call('XADD', stream_key, '*', 't', tenant, 'e', entity, 'id', agg_id,
      'v', v, 'op', 'upsert', 'row', row, 'at', now_ms, 'n', n)
  end
  statuses[1] = string.rep('o', nw)
  bulk('ZADD', ids_key, live)
end
finish()
if not adds then
  -- After finish's removals: per group its key, a count, then count (score, member).
  local i = groups_at
  while i <= #ARGV do
    local key, last = ARGV[i], i + 1 + 2 * tonumber(ARGV[i + 1])
    for s = i + 2, last, 4000 do
      call('ZADD', key, unpack(ARGV, s, math.min(s + 3999, last)))
    end
    i = last + 1
  end
end
out[1] = table.concat(statuses)
return out
"""
)
"""Write many rows of one (tenant, entity) and append their events, atomically.

The same per-row step as `WRITE` (same keys, entries, checks and events), for
a batch in one call, in order (an id given twice is written twice). KEYS:
1 live-id sorted set; 2 partition stream; 3 index-count hash; 4 partition
event counter; 5… one row hash per write. ARGV: 1 tenant; 2 entity; 3 stream
MAXLEN; then five per write (in KEYS order): op `upsert`|`delete`, expected
version or `""`, id, row JSON (`""` on delete), index entries (`""` on delete).

Optionally, after those, the **grouped entries**: every write's entries
again, as ZADD arguments grouped by key — per key the key, a count `c`, then
`c` (score, member) pairs (`n` entries: `x`, id; `l` entries: `0`, `x`).
They may only hold `n`/`l` entries. The script uses them when every write is
an upsert of a distinct id and none conflicts (it reads every row hash
first): then it adds the new entries with one ZADD per key, after removing
only the entries live rows drop, instead of decoding each row's entries.
Otherwise it ignores them, so sending them never changes the outcome.

Returns `{statuses, version…}`: `statuses` has one letter per write, `o` ok,
`c` conflict, `n` noop (as `WRITE`'s statuses), then each write's version
(the written one, or the current one when nothing was written). As `WRITE`,
it reads and checks every key before its first write: an error reply means
nothing of the call was written.

Cost: per row one HMGET, one HSET (and an HDEL on delete) and one XADD; the
index changes of the whole call are applied once per key at the end (one
SADD/SREM/ZADD/ZREM per index key, one HINCRBY per count field; with the
grouped entries, one ZADD per key straight from ARGV, and no per-row Lua
work on entries but for live rows whose entries change), then one SET of the
event counter and one XTRIM. On the demo entity (five indexed columns) the
ZADDs (six members per new row: five indexes and the live ids) take about
half the server's time; see `benchmarks/bench_redis.py`.
"""

_NEWER = r"""
-- Positions are fixed-width lowercase hex (equal lengths): compared 7 digits at a time,
-- each chunk exact as a Lua number (no locale-dependent string comparison).
local function newer(a, b)
  if b == '' then return true end
  for i = 1, #a, 7 do
    local x, y = tonumber(string.sub(a, i, i + 6), 16), tonumber(string.sub(b, i, i + 6), 16)
    if x ~= y then return x > y end
  end
  return false
end
"""

SOURCE_APPLY = (
    _WRITE_FN
    + _NEWER
    + r"""
local wm_key = KEYS[1]
stream_key, seq_key = KEYS[2], KEYS[3]
local mode, gen = ARGV[1], ARGV[2]
maxlen = ARGV[3]
local wm = ''
if mode == 's' then wm = call('GET', wm_key) or '' end
local top, applied, skipped, same, more = wm, 0, 0, 0, 0
-- A row's state (`states`, as `write` keeps it) and its JSON as the call's planned
-- writes leave them (false: not live), read with one HMGET on first use.
local rows = {}
local function current(row_key)
  local s = states[row_key]
  if not s then
    local r = call('HMGET', row_key, 'v', 'ix', 'row')
    s = {r[1], r[2]}
    states[row_key] = s
    rows[row_key] = r[3]
  end
  return s, rows[row_key]
end
-- Plan every group's writes (reads only), keeping each group's own plan.
local groups, stamps = {}, {}
local k, a = 4, 5
for _ = 1, tonumber(ARGV[4]) do
  ids_key, counts_key = KEYS[k], KEYS[k + 1]
  tenant, entity = ARGV[a], ARGV[a + 1]
  local prefix, nw = ARGV[a + 2], tonumber(ARGV[a + 3])
  k, a = k + 2, a + 4
  planned, sets, zsets, counts = {}, {}, {}, {}
  -- A group's positions ascend: once one is after the watermark, so are the rest.
  local fresh, last = mode ~= 's', nil
  for _ = 1, nw do
    local pos, op, id, row, blob = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local row_key = KEYS[k]
    k, a = k + 1, a + 5
    if not fresh and more == 0 then fresh = newer(pos, wm) end
    if more == 1 or not fresh then
      skipped = skipped + 1
    elseif op == 'u' then
      local cur, stored = current(row_key)
      if stored == row and cur[2] == blob then
        same = same + 1
      else
        write(row_key, cur, 'upsert', '', id, row, blob, true)
        rows[row_key] = row
        applied = applied + 1
      end
      if mode == 'c' then stamps[#stamps + 1] = row_key end
      last = pos
    elseif op == 'd' then
      local cur = current(row_key)
      if cur[2] then
        write(row_key, cur, 'delete', '', id, '', '', true)
        rows[row_key] = false
        applied = applied + 1
      else
        same = same + 1
      end
      last = pos
    else -- 't': delete up to `row` live rows of the (tenant, entity)
      local most = tonumber(row)
      local live = call('ZRANGE', ids_key, 0, most - 1)
      for _, rid in ipairs(live) do
        local rk = prefix .. rid
        write(rk, current(rk), 'delete', '', rid, '', '', true)
        rows[rk] = false
        applied = applied + 1
      end
      -- `blob` '1': the last truncate of its partition at `pos`: then record `pos`.
      if #live >= most then more = 1 elseif blob == '1' then last = pos end
    end
  end
  if mode == 's' and last and newer(last, top) then top = last end
  groups[#groups + 1] = {ids_key, counts_key, tenant, entity, planned, sets, zsets, counts}
end
local function use(g)
  ids_key, counts_key, tenant, entity = g[1], g[2], g[3], g[4]
  planned, sets, zsets, counts = g[5], g[6], g[7], g[8]
end
-- Check every key the call writes, then write.
for _, g in ipairs(groups) do
  use(g)
  if #planned > 0 then
    local err = check_types()
    if err then return redis.error_reply(err) end
  end
end
for _, g in ipairs(groups) do
  use(g)
  commit()
  finish()
end
for _, row_key in ipairs(stamps) do call('HSET', row_key, 'g', gen) end
if mode == 's' and top ~= wm then call('SET', wm_key, top) end
return {applied, skipped, same, more}
"""
)
"""Apply a source's writes to one partition, atomically, each at most once.

A *source* (the Postgres ingester) writes rows it did not validate through
`Writer`, each at a *position* in its own change order: fixed-width
lowercase hex, equal lengths, later changes larger. Each write is `WRITE`'s
step (same keys, entries and events), with two differences: an upsert that
would store the row and entries it already has writes nothing (no version,
no event: re-applying never moves a window), and in stream mode a write at a
position not after the partition's watermark is skipped (it was applied).

KEYS: 1 the partition's watermark `Keys.source_position(source, p)`; 2 the
partition stream; 3 its event counter; then per group (one tenant and
entity): its live-id set, its index-count hash, then one row hash per write.
ARGV: 1 mode, `s` stream (positions checked, the watermark raised to the
largest applied; a group's positions must ascend) or `c` copy (no positions;
each upserted row's hash gets field `g` = ARGV 2); 2 copy generation; 3
stream MAXLEN; 4 number of groups; then per group: tenant, entity, row-key
prefix, number of writes, then per write: position, op, id, row JSON, index
entries. Ops: `u` upsert, `d` delete, `t` truncate (the row JSON field holds
a count *m*: delete up to *m* live rows of the group; a truncate is the only
write of its call, and its entries field is `1` when, done, it records its
position: the truncates of several tenants of one partition at one position
record it with the last).

Returns `{applied, skipped, unchanged, more}`: writes that changed a row,
writes skipped as already applied, writes that found the row as it would
leave it, and `1` when a truncate stopped after *m* rows (call it again; its
position is recorded once it finds no more).

As `WRITE`, it reads and plans every write of every group first, then checks
the type of every key it is about to write, and only then writes: an error
reply (a key of another type, a corrupt counter) means nothing of the call
was written, the watermark included.
"""

SOURCE_SWEEP = (
    _WRITE_FN
    + r"""
ids_key, stream_key, counts_key, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
tenant, entity, maxlen = ARGV[1], ARGV[2], ARGV[3]
local prefix, gen = ARGV[4], ARGV[5]
local live = call('ZRANGEBYLEX', ids_key, ARGV[6], '+', 'LIMIT', 0, tonumber(ARGV[7]))
local deleted = 0
for _, id in ipairs(live) do
  local rk = prefix .. id
  local r = call('HMGET', rk, 'v', 'ix', 'g')
  if r[3] ~= gen then
    write(rk, {r[1], r[2]}, 'delete', '', id, '', '', true)
    deleted = deleted + 1
  end
end
local err = commit_checked()
if err then return redis.error_reply(err) end
finish()
return {deleted, #live, live[#live] or ''}
"""
)
"""Delete the live rows of one (tenant, entity) that a source's copy did not write.

After a copy (generation *g*, `SOURCE_APPLY` mode `c`), every row the copy
wrote has `g`; a live row without it is gone from the source: deleted here,
with its event, as `WRITE` deletes. KEYS: 1 live-id set; 2 partition stream;
3 index-count hash; 4 event counter. ARGV: 1 tenant; 2 entity; 3 stream
MAXLEN; 4 row-key prefix; 5 generation; 6 start (ZRANGEBYLEX bound: `-`,
then `(` + the last id of the previous call); 7 how many live ids to look at.
Returns `{deleted, looked at, last id looked at}` (fewer looked at than
asked: done). It checks every key's type before its first write, as `WRITE`
does (an error reply: nothing deleted).
"""

READ = r"""
local ids_key, stream_key, counts_key, zkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, row_prefix = ARGV[1], ARGV[2]
local last = redis.call('XREVRANGE', stream_key, '+', '-', 'COUNT', 1)
local mark = '0-0'
if last[1] then mark = last[1][1] end
local total = redis.call('ZCARD', ids_key)
local members
local kind = 'i'
if mode == 'all' then
  members = redis.call('ZRANGE', ids_key, 0, -1)
elseif mode == 'sets' then
  if tonumber(redis.call('HGET', counts_key, ARGV[3]) or '0') ~= total then
    return {mark, 'stale', 0}
  end
  members = {}
  local seen = {}
  for i = 4, #ARGV do
    for _, m in ipairs(redis.call('SMEMBERS', ARGV[i])) do
      if not seen[m] then seen[m] = true; members[#members + 1] = m end
    end
  end
elseif mode == 'range' then
  kind = ARGV[3]
  if redis.call('ZCARD', zkey) ~= total then
    return {mark, 'stale', 0}
  end
  members = {}
  local seen = {}
  local cmd = kind == 'n' and 'ZRANGEBYSCORE' or 'ZRANGEBYLEX'
  for i = 4, #ARGV - 1, 2 do
    for _, m in ipairs(redis.call(cmd, zkey, ARGV[i], ARGV[i + 1])) do
      if not seen[m] then seen[m] = true; members[#members + 1] = m end
    end
  end
else
  kind = ARGV[3]
  local dir, start, count = ARGV[4], ARGV[5], ARGV[6]
  if kind ~= 'i' and redis.call('ZCARD', zkey) ~= total then
    return {mark, 'stale', 0}
  end
  if kind == 'n' then
    if dir == 'asc' then
      members = redis.call('ZRANGEBYSCORE', zkey, start, '+inf', 'LIMIT', 0, count)
    else
      members = redis.call('ZREVRANGEBYSCORE', zkey, start, '-inf', 'LIMIT', 0, count)
    end
  elseif dir == 'asc' then
    members = redis.call('ZRANGEBYLEX', zkey, start, '+', 'LIMIT', 0, count)
  else
    members = redis.call('ZREVRANGEBYLEX', zkey, start, '-', 'LIMIT', 0, count)
  end
end
local out = {mark, 'ok', #members}
for _, m in ipairs(members) do
  local id = m
  if kind == 'l' then
    if string.byte(m, 1) == 255 then
      id = string.sub(m, 2)
    else
      id = string.sub(m, string.find(m, '\0\0', 1, true) + 2)
    end
  end
  local r = redis.call('HMGET', row_prefix .. id, 'v', 'row')
  if r[2] then
    out[#out + 1] = id; out[#out + 1] = r[1]; out[#out + 1] = r[2]
  end
end
return out
"""
"""Read candidate rows of one (tenant, entity) and the stream position they reflect.

KEYS: 1 live-id sorted set `Keys.table(t, e)`; 2 partition stream; 3 index-count
hash; 4 the sorted set a walk or range reads (the live-id set itself for `i`).

ARGV: 1 mode; 2 row-key prefix (row key = prefix + id). Mode `all`: every
live row. Mode `range`: 3 kind (`n` numeric, `l` lexical index), 4… pairs of
inclusive-syntax bounds (ZRANGEBYSCORE/ZRANGEBYLEX) — the rows in their
union, if the index (KEYS 4) covers every live row. Mode `sets` (value sets
of earlier versions): 3 count field `v:{column}`, 4… value-set keys — the
rows in their union, if the column's sets cover every live row. Mode
`walk`: 3 kind (`n` numeric / `l` lexical sorted set, `i` the id set by id),
4 `asc`|`desc`, 5 start bound (inclusive; ZRANGEBYSCORE/ZRANGEBYLEX syntax),
6 how many members to read — rows in that sorted set's order, if it covers
every live row. A lexical index's member is `enc(…) + id`: the id follows
the first `\\x00\\x00` (or a leading `\\xff`, null).

Returns `{watermark, status, members read, id, version, row JSON, …}` with
status `ok`, or `stale` (the index does not cover every row: read with `all`).
The watermark is the stream's last entry id (`0-0` if none): the rows
reflect exactly the writes up to it.
"""

HEARTBEAT = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], expiry, 'PXAT', expiry)
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
return expiry
"""
"""Refresh one member's liveness, on the server's clock.

KEYS: 1 heartbeat key; 2 member sorted set. ARGV: 1 member id; 2 TTL in ms.
Sets the key (value: expiry, epoch ms) to expire at that very instant
(PXAT) and records the expiry as the member's score, so the key and the
live set agree on when the member ends. Returns the expiry (epoch ms,
server clock).
"""

LIVE_MEMBERS = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
"""
"""The members whose expiry is not before now (server clock); prunes the expired.

A member is live up to and including its expiry instant, as its key is
(Redis expires a key once the time is past its expiry).

KEYS: 1 member sorted set. Returns the live ids (unsorted).
"""

STREAM_HEAD = r"""
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
return {id, tonumber(redis.call('GET', KEYS[2]) or '0')}
"""
"""A partition stream's last entry id and its event counter, read together.

KEYS: 1 partition stream; 2 its event counter `event_seq(p)`. Returns
`{last id (0-0 if none), counter (0 if none)}`.
"""
