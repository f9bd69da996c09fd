"""The server-side Lua scripts: the one atomic step of each write and read.

They are plain Lua (Redis 6.2 has no functions), run with EVALSHA and
re-loaded on NOSCRIPT. Their KEYS/ARGV are the contract another language
uses to be a writer or a reader; each constant's docstring states it.
Scripts touch keys they derive from the row hash (its index entries) or
from a prefix argument, so they target a standalone Redis, not Redis Cluster.
"""

from __future__ import annotations

__all__ = ("HEARTBEAT", "LIVE_MEMBERS", "READ", "WRITE", "WRITE_MANY")

_WRITE_FN = r"""
local V, N = 118, 110 -- string.byte('v'), string.byte('n')
local function parse(blob)
  local out, pos, len = {}, 1, #blob
  while pos <= len do
    local _, e, klen = string.find(blob, '^(%d+):', pos + 1)
    local key_end = e + tonumber(klen)
    local _, e2, xlen = string.find(blob, '^(%d+):', key_end + 1)
    local stop = e2 + tonumber(xlen)
    out[#out + 1] = {string.byte(blob, pos), string.sub(blob, e + 1, key_end),
      string.sub(blob, e2 + 1, stop), pos, stop}
    pos = stop + 1
  end
  return out
end
local function add(en, agg_id, counts_key)
  if en[1] == V then
    redis.call('SADD', en[2], agg_id)
    redis.call('HINCRBY', counts_key, en[3], 1)
  elseif en[1] == N then
    redis.call('ZADD', en[2], en[3], agg_id)
  else
    redis.call('ZADD', en[2], 0, en[3])
  end
end
local function remove(en, agg_id, counts_key)
  if en[1] == V then
    redis.call('SREM', en[2], agg_id)
    if redis.call('HINCRBY', counts_key, en[3], -1) <= 0 then
      redis.call('HDEL', counts_key, en[3])
    end
  elseif en[1] == N then
    redis.call('ZREM', en[2], agg_id)
  else
    redis.call('ZREM', en[2], en[3])
  end
end
-- One row: the common body of WRITE and WRITE_MANY. `a` = {op, expected,
-- tenant, entity, id, row JSON, maxlen, entries}; `at` = write time (ms).
local function write(row_key, ids_key, stream_key, counts_key, seq_key, a, at)
  local op, expected, agg_id = a[1], a[2], a[5]
  local cur = redis.call('HMGET', row_key, 'v', 'ix')
  local version = tonumber(cur[1] or '0')
  if expected ~= '' and tonumber(expected) ~= version then
    return {'conflict', version, ''}
  end
  -- A live row always has `ix` (possibly empty); a deleted one keeps only `v`.
  if op == 'delete' and not cur[2] then
    return {'noop', version, ''}
  end
  local old_blob, new_blob = cur[2], a[8] or ''
  if old_blob ~= new_blob then
    -- Only entries that changed are touched: an update of unindexed columns costs nothing.
    local new = parse(new_blob)
    if not old_blob or old_blob == '' then
      for _, en in ipairs(new) do add(en, agg_id, counts_key) end
    elseif #new == 0 then
      for _, en in ipairs(parse(old_blob)) do remove(en, agg_id, counts_key) end
    else
      local old, new_set, old_set = parse(old_blob), {}, {}
      for _, en in ipairs(new) do new_set[string.sub(new_blob, en[4], en[5])] = true end
      for _, en in ipairs(old) do
        local ident = string.sub(old_blob, en[4], en[5])
        old_set[ident] = true
        if not new_set[ident] then remove(en, agg_id, counts_key) end
      end
      for _, en in ipairs(new) do
        if not old_set[string.sub(new_blob, en[4], en[5])] then add(en, agg_id, counts_key) end
      end
    end
  end
  version = version + 1
  if op == 'delete' then
    redis.call('HSET', row_key, 'v', version)
    redis.call('HDEL', row_key, 'row', 'ix')
    redis.call('ZREM', ids_key, agg_id)
  else
    redis.call('HSET', row_key, 'v', version, 'row', a[6], 'ix', a[8] or '')
    redis.call('ZADD', ids_key, 0, agg_id)
  end
  local n = redis.call('INCR', seq_key)
  local sid
  if op == 'delete' then
    sid = redis.call('XADD', stream_key, 'MAXLEN', '~', a[7], '*',
      't', a[3], 'e', a[4], 'id', agg_id, 'v', version, 'op', 'delete', 'at', at, 'n', n)
  else
    sid = redis.call('XADD', stream_key, 'MAXLEN', '~', a[7], '*',
      't', a[3], 'e', a[4], 'id', agg_id, 'v', version, 'op', 'upsert',
      'row', a[6], 'at', at, 'n', n)
  end
  return {'ok', version, sid}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

WRITE = (
    _WRITE_FN
    + r"""
return write(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV, now_ms)
"""
)
"""Write one row (upsert or delete) and append its event, atomically.

KEYS: 1 row hash `Keys.row(t, e, id)`; 2 live-id sorted set `Keys.table(t, e)`;
3 partition stream `Keys.event_stream(partition_of(t, e))`; 4 index-count hash
`index_counts(t, e)`; 5 partition event counter `event_seq(p)`.

ARGV: 1 op `upsert`|`delete`; 2 expected version or `""` (none); 3 tenant;
4 entity; 5 id; 6 row JSON (`""` on delete); 7 stream MAXLEN (approximate);
8 the row's index entries (upsert only), one string: for each entry a kind
byte, then its key and its `x`, each written as `<byte length>:<bytes>`
(e.g. `v5:lq:vx…3:v:a`). Kinds:

* `v` value set: SADD key id, and HINCRBY the count hash field `x` (`v:{column}`);
* `n` numeric sort index: ZADD key `x` (the score) id;
* `l` lexical sort index: ZADD key 0 `x` (the member).

(`_index.Layout` derives them from the entity's spec.) The row hash keeps
`v` (version, kept after a delete so a re-insert continues from it), `row`
(JSON) and `ix` (the entries string), so the next write removes exactly the
entries that changed; a live row always has `ix`.

Returns `{status, version, stream id}`: `ok` (written at `version`),
`conflict` (expected version differs; `version` is the current one, nothing
written) or `noop` (delete of a missing row; nothing written). The event's
fields are DESIGN §4's (`t e id v op row at`) plus `n`, the partition's
event counter, by which a reader detects a trimmed gap.
"""

WRITE_MANY = (
    _WRITE_FN
    + r"""
local base = {'upsert', '', ARGV[1], ARGV[2], '', '', ARGV[3], ''}
local versions = {}
for i = 5, #KEYS do
  local j = 4 + (i - 5) * 3
  base[5], base[6], base[8] = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  versions[#versions + 1] = write(KEYS[i], KEYS[1], KEYS[2], KEYS[3], KEYS[4], base, now_ms)[2]
end
return versions
"""
)
"""Upsert many rows of one (tenant, entity) and append their events, atomically.

The same per-row step as `WRITE` (same keys, entries and event), for a batch
in one call. KEYS: 1 live-id sorted set; 2 partition stream; 3 index-count
hash; 4 partition event counter; 5… one row hash per row. ARGV: 1 tenant;
2 entity; 3 stream MAXLEN; then per row (in KEYS order) its id, row JSON and
index entries. Returns the rows' new versions, in order (an id given twice
is written twice).
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
hash; 4 the sorted set a walk reads (the live-id set itself for `i`).

ARGV: 1 mode; 2 row-key prefix (row key = prefix + id). Mode `all`: every
live row. Mode `sets`: 3 count field `v:{column}`, 4… value-set keys — the
rows in their union, if the column's index covers every live row. Mode
`walk`: 3 kind (`n` numeric / `l` lexical sorted set, `i` the id set by id),
4 `asc`|`desc`, 5 start bound (inclusive; ZRANGEBYSCORE/ZRANGEBYLEX syntax),
6 how many members to read — rows in that sorted set's order, if it covers
every live row.

Returns `{watermark, status, members read, id, version, row JSON, …}` with
status `ok`, or `stale` (the index does not cover every row: read with `all`).
The watermark is the stream's last entry id (`0-0` if none): the rows
reflect exactly the writes up to it.
"""

HEARTBEAT = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
redis.call('SET', KEYS[1], expiry, 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
return expiry
"""
"""Refresh one member's liveness, on the server's clock.

KEYS: 1 heartbeat key; 2 member sorted set. ARGV: 1 member id; 2 TTL in ms.
Sets the key (value: expiry, epoch ms) with that TTL and records the expiry
as the member's score. Returns the expiry (epoch ms, server clock).
"""

LIVE_MEMBERS = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
"""
"""The members whose expiry is after now (server clock); prunes the expired.

KEYS: 1 member sorted set. Returns the live ids (unsorted).
"""
