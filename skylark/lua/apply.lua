-- Apply a bundle that was written on another node: newer version wins, atomically.
-- KEYS[1] data hash, KEYS[2] meta hash.
-- ARGV: version, node, updated_ms, size, checksum, max_bytes, n, then n triples name, value, digest.
-- Returns {outcome, local_version}: 'applied' | 'duplicate' | 'stale' | 'conflict' | 'too_large'.
-- Applied bundles are NOT appended to the change stream: that would propagate them again.
-- HSET in chunks: unpack() of a very large table would overflow Lua's C stack.
local function hset_all(key, flat)
  for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
end
local data, meta = KEYS[1], KEYS[2]
local version, node, updated, size, checksum = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_bytes, n = tonumber(ARGV[6]), tonumber(ARGV[7])

local current = tonumber(redis.call('HGET', meta, 'version') or '0')
if version < current then return {'stale', current} end
if version == current then
  if redis.call('HGET', meta, 'checksum') == checksum then return {'duplicate', current} end
  return {'conflict', current}
end
if tonumber(size) > max_bytes then return {'too_large', current} end

-- Single-mechanism fields of an older local version live in their own keys: drop them too.
if redis.call('HGET', meta, 'mechanism') == 'single' then
  local old = redis.call('HGETALL', meta)
  for i = 1, #old, 2 do
    if string.sub(old[i], 1, 2) == 'd:' then redis.call('DEL', ARGV[8 + 3 * n] .. string.sub(old[i], 3)) end
  end
end
redis.call('DEL', data, meta)
local values, digests = {}, {}
for i = 0, n - 1 do
  local name = ARGV[8 + 3 * i]
  values[#values + 1] = name
  values[#values + 1] = ARGV[9 + 3 * i]
  digests[#digests + 1] = 'd:' .. name
  digests[#digests + 1] = ARGV[10 + 3 * i]
end
if n > 0 then
  hset_all(data, values)
  hset_all(meta, digests)
end
redis.call('HSET', meta, 'version', version, 'node', node, 'updated_ms', updated, 'size', size,
  'checksum', checksum, 'fields', n, 'mechanism', 'bundled', 'deleted', '0')
return {'applied', version}
