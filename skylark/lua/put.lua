-- Write fields of one (chain, function) and append the change, atomically.
-- KEYS[1] data hash (bundled), KEYS[2] meta hash, KEYS[3] change stream,
-- KEYS[4..] one string key per field (single mechanism only, in the order of the triples).
-- ARGV: node, now_ms, maxlen, max_bytes, expected_version ('' = any), replace ('0'|'1'),
--       ttl_s ('0' = none), mechanism, chain, function, n, single_key_prefix,
--       then n triples name, value, digest.
-- Returns {'ok', version, size, checksum, field_count, entry_id}
--      or {'conflict', current_version} / {'too_large', size}. Checks come before any write,
--      so a refused call writes nothing.
-- HSET in chunks: unpack() of a very large table would overflow Lua's C stack.
local function hset_all(key, flat)
  for i = 1, #flat, 1000 do redis.call('HSET', key, unpack(flat, i, math.min(i + 999, #flat))) end
end
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
local node, now, maxlen = ARGV[1], ARGV[2], ARGV[3]
local max_bytes, expected, replace = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1'
local ttl, mechanism, chain, fn, n = tonumber(ARGV[7]), ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
local single = mechanism == 'single'

local current = tonumber(redis.call('HGET', meta, 'version') or '0')
if expected ~= '' and tonumber(expected) ~= current then
  return {'conflict', current}
end
-- A tombstone (deleted bundle) keeps its version but no content.
local fresh = replace or redis.call('HGET', meta, 'deleted') == '1'
local old_mechanism = redis.call('HGET', meta, 'mechanism')
if old_mechanism and old_mechanism ~= mechanism and redis.call('HGET', meta, 'deleted') ~= '1' then
  fresh = true
end

local size = 0
if not fresh then size = tonumber(redis.call('HGET', meta, 'size') or '0') end
for i = 0, n - 1 do
  local name, value = ARGV[13 + 3 * i], ARGV[14 + 3 * i]
  if not fresh then
    if single then
      if redis.call('EXISTS', KEYS[4 + i]) == 1 then
        size = size - #name - redis.call('STRLEN', KEYS[4 + i])
      end
    elseif redis.call('HEXISTS', data, name) == 1 then
      size = size - #name - redis.call('HSTRLEN', data, name)
    end
  end
  size = size + #name + #value
end
if size > max_bytes then
  return {'too_large', size}
end

if fresh then
  -- Drop the previous content of either mechanism (names from the digests in meta).
  local old = redis.call('HGETALL', meta)
  for i = 1, #old, 2 do
    if string.sub(old[i], 1, 2) == 'd:' then
      redis.call('DEL', ARGV[12] .. string.sub(old[i], 3))
    end
  end
  redis.call('DEL', data, meta)
end

local digests = {}
for i = 0, n - 1 do
  local name, value, digest = ARGV[13 + 3 * i], ARGV[14 + 3 * i], ARGV[15 + 3 * i]
  if single then
    redis.call('SET', KEYS[4 + i], value)
    if ttl > 0 then redis.call('EXPIRE', KEYS[4 + i], ttl) end
  else
    redis.call('HSET', data, name, value)
  end
  digests[#digests + 1] = 'd:' .. name
  digests[#digests + 1] = digest
end
if #digests > 0 then hset_all(meta, digests) end

-- Checksum over all fields' digests, sorted by name (see skylark/bundle.py).
local all = redis.call('HGETALL', meta)
local names, by_name = {}, {}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'd:' then
    local name = string.sub(all[i], 3)
    names[#names + 1] = name
    by_name[name] = all[i + 1]
  end
end
table.sort(names)
local parts = {}
for i, name in ipairs(names) do parts[i] = name .. '\0' .. by_name[name] .. '\n' end
local checksum = redis.sha1hex(table.concat(parts))

local version = current + 1
redis.call('HSET', meta, 'version', version, 'node', node, 'updated_ms', now, 'size', size,
  'checksum', checksum, 'fields', #names, 'mechanism', mechanism, 'deleted', '0')
redis.call('PERSIST', meta)
if ttl > 0 then
  redis.call('EXPIRE', meta, ttl)
  if not single then redis.call('EXPIRE', data, ttl) end
elseif not single then
  redis.call('PERSIST', data)
end

local changed = {}
for i = 0, n - 1 do changed[#changed + 1] = ARGV[13 + 3 * i] end
local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
  'chain', chain, 'function', fn, 'op', 'put', 'mechanism', mechanism,
  'fields', table.concat(changed, ','), 'version', version, 'node', node,
  'size', size, 'checksum', checksum, 'ts', now)
return {'ok', version, size, checksum, #names, id}
