-- Delete the state of one (chain, function), leaving a tombstone that keeps the version, so a
-- late propagated copy of the deleted bundle is rejected as stale. Appends the change.
-- KEYS[1] data hash, KEYS[2] meta hash, KEYS[3] change stream.
-- ARGV: node, now_ms, maxlen, chain, function, single_key_prefix, tombstone_ttl_s.
-- Returns {'ok', version, entry_id} or {'missing', 0}.
-- Redis does not roll a script back when a command fails half-way, so everything that could
-- fail is checked before the first write.
local stream_type = redis.call('TYPE', KEYS[3]).ok
if stream_type ~= 'none' and stream_type ~= 'stream' then
  return redis.error_reply('WRONGTYPE change stream key ' .. KEYS[3] .. ' holds a ' .. stream_type)
end
for i = 1, 2 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'none' and t ~= 'hash' then
    return redis.error_reply('WRONGTYPE state key ' .. KEYS[i] .. ' holds a ' .. t)
  end
end
local data, meta, stream = KEYS[1], KEYS[2], KEYS[3]
local node, now, maxlen, chain, fn, prefix, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
local current = redis.call('HGET', meta, 'version')
if not current or redis.call('HGET', meta, 'deleted') == '1' then return {'missing', 0} end
local mechanism = redis.call('HGET', meta, 'mechanism')
local old = redis.call('HGETALL', meta)
local names = {}
for i = 1, #old, 2 do
  if string.sub(old[i], 1, 2) == 'd:' then
    local name = string.sub(old[i], 3)
    names[#names + 1] = name
    -- Single state keys are derived from the meta digests, so they are not in KEYS: this is
    -- fine on the standalone per-node Redis Skylark uses (not for Redis Cluster).
    if mechanism == 'single' then redis.call('DEL', prefix .. name) end
  end
end
local version = tonumber(current) + 1
redis.call('DEL', data, meta)
redis.call('HSET', meta, 'version', version, 'node', node, 'updated_ms', now, 'size', 0,
  'checksum', '', 'fields', 0, 'mechanism', mechanism, 'deleted', '1')
if ttl > 0 then redis.call('EXPIRE', meta, ttl) end
table.sort(names)
local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
  'chain', chain, 'function', fn, 'op', 'delete', 'mechanism', mechanism,
  'fields', table.concat(names, ','), 'version', version, 'node', node,
  'size', 0, 'checksum', '', 'ts', now)
return {'ok', version, id}
