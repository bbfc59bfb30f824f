-- Every write of skylark.state.store, checked and made in one round trip.
--
-- A write is one MULTI/EXEC: this script's check step, the values (HSET into a staging key, or
-- SET of staged single keys), then this script's settle step. No value passes through Lua:
-- Redis would copy each argument into a Lua string (1-2 ms per MB here), more than the HSET
-- itself. The check step decides from small arguments (names, digests, lengths) and the stored
-- metadata; when it accepts, it writes the metadata and the change entry, moves the stored data
-- into the staging key if the write merges into it (RENAME: O(1), nothing copied) and sets the
-- commit marker to the transaction's nonce. The settle step renames the staging key over the
-- data when the marker holds that nonce and drops it otherwise, so a refused write -- or a check
-- step that failed with an error, since EXEC does not stop at one -- leaves nothing behind. Writes without values (delete, tombstone)
-- are a single call of the check step.
--
-- KEYS: 1 data hash, 2 meta hash, 3 change stream, 4 staging hash, 5 commit marker,
--       6 (optional) a delivery's idempotency key.
-- ARGV[1]: put | apply | delta | delete | tombstone | settle; the rest per step, below; a check
-- step's last argument is the transaction's nonce.
--
-- Versions may reach 2^63-1 (a copy from elsewhere), past the 2^53 a Lua number holds
-- exactly: they are compared and incremented as decimal strings.

local INT64_MAX = '9223372036854775807'

local function cmp(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end

local function incr(s)
  local i = #s
  while i > 0 and string.sub(s, i, i) == '9' do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #s) end
  return string.sub(s, 1, i - 1) .. string.char(string.byte(s, i) + 1) .. string.rep('0', #s - i)
end

-- The stored metadata: plain fields, then per-field digests and value lengths.
local function current()
  local flat = redis.call('HGETALL', KEYS[2])
  local meta, digests, lengths = {}, {}, {}
  for i = 1, #flat, 2 do
    local k, v = flat[i], flat[i + 1]
    local kind = string.sub(k, 1, 2)
    if kind == 'd:' then digests[string.sub(k, 3)] = v
    elseif kind == 'l:' then lengths[string.sub(k, 3)] = tonumber(v)
    else meta[k] = v end
  end
  meta.version = meta.version or '0'
  return meta, digests, lengths
end

local function sorted_names(digests)
  local names = {}
  for name in pairs(digests) do names[#names + 1] = name end
  table.sort(names)
  return names
end

-- As skylark.state.bundle.checksum_of_digests: sha1 of "name\0digest\n", sorted by name.
local function checksum(digests)
  local parts = {}
  for i, name in ipairs(sorted_names(digests)) do parts[i] = name .. '\0' .. digests[name] .. '\n' end
  return redis.sha1hex(table.concat(parts))
end

-- A command over a long argument list, in slices: unpack() is bounded by Lua's C stack.
local function call_sliced(command, key, args)
  for i = 1, #args, 4000 do
    redis.call(command, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

local function wrong_types(stream)
  local data_type = redis.call('TYPE', KEYS[1]).ok
  if data_type ~= 'none' and data_type ~= 'hash' then return {'wrongtype', KEYS[1], data_type} end
  if stream then
    local stream_type = redis.call('TYPE', KEYS[3]).ok
    if stream_type ~= 'none' and stream_type ~= 'stream' then return {'wrongtype', KEYS[3], stream_type} end
  end
  return nil
end

-- Drop the stored content and metadata of either mechanism (single: one key per field).
local function drop(meta, digests, single_prefix)
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  if meta.mechanism == 'single' then
    local doomed = {}
    for name in pairs(digests) do doomed[#doomed + 1] = single_prefix .. name end
    for i = 1, #doomed, 4000 do redis.call('DEL', unpack(doomed, i, math.min(i + 3999, #doomed))) end
  end
end

local function seen()
  return #KEYS >= 6 and redis.call('EXISTS', KEYS[6]) == 1
end

local function mark(ttl)
  if #KEYS >= 6 then redis.call('SET', KEYS[6], '1', 'EX', ttl) end
end

-- The change entry (what a RedisStreamSource sends on), with the writer's traceparent last when
-- there is one.
local function change(maxlen, trace, ...)
  local args = {'XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', ...}
  if trace and trace ~= '' then
    args[#args + 1] = 'traceparent'
    args[#args + 1] = trace
  end
  return redis.call(unpack(args))
end

-- The fields a step was given: n, then name, digest, length n times from ARGV[at].
local function incoming(at)
  local n, out = tonumber(ARGV[at]), {}
  for i = 0, n - 1 do
    local base = at + 1 + 3 * i
    out[#out + 1] = {ARGV[base], ARGV[base + 1], ARGV[base + 2]}
  end
  return out
end

-- The metadata of a new version (numbers as strings: a Lua number may print as 1e+14).
local function meta_args(version, node, updated_ms, size, sum, count, mechanism, fields)
  local args = {'version', version, 'node', node, 'updated_ms', updated_ms, 'size', size,
                'checksum', sum, 'fields', count, 'mechanism', mechanism, 'deleted', '0'}
  for _, f in ipairs(fields) do
    args[#args + 1] = 'd:' .. f[1]; args[#args + 1] = f[2]
    args[#args + 1] = 'l:' .. f[1]; args[#args + 1] = f[3]
  end
  return args
end

-- Lay the new fields over the stored digests and lengths; the resulting size and field count.
local function merge(digests, lengths, fields)
  for _, f in ipairs(fields) do digests[f[1]] = f[2]; lengths[f[1]] = tonumber(f[3]) end
  local size, count = 0, 0
  for name, length in pairs(lengths) do size = size + #name + length; count = count + 1 end
  return size, count
end

-- Merge into the stored data: it becomes the staging key the values are written over.
local function stage_stored()
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[4])
  else redis.call('DEL', KEYS[4]) end
end

local function commit_marker()
  redis.call('SET', KEYS[5], ARGV[#ARGV])
end

-- put: 2 chain, 3 function, 4 mechanism, 5 replace (0|1), 6 expected version or '', 7 largest
-- size, 8 node, 9 now, 10 stream MAXLEN, 11 single-key prefix, 12 n, fields, then the writer's
-- W3C traceparent or '' (the change entry carries it: the push continues the writer's trace).
-- -> {'ok', version, size, checksum, count, entry id} | {'conflict', current}
--    | {'too_large', size} | {'exhausted', current} | {'wrongtype', key, type}
local function put()
  local mechanism, fields = ARGV[4], incoming(12)
  local bad = wrong_types(true)
  if bad then return bad end
  local meta, stored, lengths = current()
  if ARGV[6] ~= '' and ARGV[6] ~= meta.version then return {'conflict', meta.version} end
  local fresh = ARGV[5] == '1' or meta.deleted == '1' or (meta.mechanism and meta.mechanism ~= mechanism)
  local digests = stored
  if fresh then digests, lengths = {}, {} end
  local size, count = merge(digests, lengths, fields)
  if size > tonumber(ARGV[7]) then return {'too_large', tostring(size)} end
  if meta.version == INT64_MAX then return {'exhausted', meta.version} end
  local version, sum = incr(meta.version), checksum(digests)
  if fresh then
    drop(meta, stored, ARGV[11])
  elseif mechanism == 'bundled' then
    stage_stored()
  end
  size, count = tostring(size), tostring(count)
  call_sliced('HSET', KEYS[2], meta_args(version, ARGV[8], ARGV[9], size, sum, count, mechanism, fields))
  local names = {}
  for i, f in ipairs(fields) do names[i] = f[1] end
  local id = change(ARGV[10], ARGV[13 + 3 * #fields],
    'chain', ARGV[2], 'function', ARGV[3], 'op', 'put', 'mechanism', mechanism,
    'fields', table.concat(names, ','), 'version', version, 'node', ARGV[8], 'size', size,
    'checksum', sum, 'ts', ARGV[9])
  commit_marker()
  return {'ok', version, size, sum, count, id}
end

-- apply (a whole bundle from elsewhere): 2 once TTL, 3 version, 4 node, 5 updated_ms, 6 size,
-- 7 checksum, 8 single-key prefix, 9 n, fields.
-- delta (fields changed since base): the same, and 10 + 3n base version.
-- -> {outcome, local version}: applied | duplicate | stale | conflict | seen, and for a delta
--    no_base (this node does not hold the base) | mismatch (base + delta is not the announced
--    bundle); those two leave no mark, so the whole bundle can follow under the same key.
local function apply(delta)
  local fields = incoming(9)
  local bad = wrong_types(false)
  if bad then return bad end
  local meta, digests, lengths = current()
  if seen() then return {'seen', meta.version} end
  local version = ARGV[3]
  local order = cmp(version, meta.version)
  if order < 0 then mark(ARGV[2]); return {'stale', meta.version} end
  if order == 0 then
    mark(ARGV[2])
    return {(meta.checksum == ARGV[7] and meta.deleted ~= '1') and 'duplicate' or 'conflict', meta.version}
  end
  local merged = {}
  if delta then
    local base = ARGV[10 + 3 * #fields]
    if meta.version ~= base or meta.deleted == '1' or meta.mechanism ~= 'bundled' then
      return {'no_base', meta.version}
    end
    local size, count = merge(digests, lengths, fields)
    if checksum(digests) ~= ARGV[7] or tostring(size) ~= ARGV[6] then return {'mismatch', meta.version} end
    merged = {count = tostring(count)}
  end
  mark(ARGV[2])
  if delta then stage_stored() else drop(meta, digests, ARGV[8]) end
  call_sliced('HSET', KEYS[2], meta_args(version, ARGV[4], ARGV[5], ARGV[6], ARGV[7],
    merged.count or tostring(#fields), 'bundled', fields))
  commit_marker()
  return {'applied', version}
end

-- delete: 2 chain, 3 function, 4 node, 5 now, 6 stream MAXLEN, 7 tombstone TTL, 8 single-key
-- prefix. -> {'ok', version} | {'not_found'} | {'exhausted', current} | {'wrongtype', ...}
-- tombstone (a delete made elsewhere): 2 once TTL, 3 version, 4 node, 5 updated_ms,
-- 6 tombstone TTL, 7 single-key prefix. -> {outcome, local version}, as apply.
local function tombstone(meta, digests, version, node, updated_ms, ttl, prefix)
  drop(meta, digests, prefix)
  redis.call('HSET', KEYS[2], 'version', version, 'node', node, 'updated_ms', updated_ms, 'size', '0',
    'checksum', '', 'fields', '0', 'mechanism', meta.mechanism or 'bundled', 'deleted', '1')
  redis.call('EXPIRE', KEYS[2], ttl)
end

-- delete: 2 chain, 3 function, 4 node, 5 now, 6 stream MAXLEN, 7 tombstone TTL, 8 single-key
-- prefix, 9 the writer's traceparent or ''.
local function delete()
  local bad = wrong_types(true)
  if bad then return bad end
  local meta, digests = current()
  if meta.version == '0' or meta.deleted == '1' then return {'not_found'} end
  if meta.version == INT64_MAX then return {'exhausted', meta.version} end
  local version, names = incr(meta.version), sorted_names(digests)
  tombstone(meta, digests, version, ARGV[4], ARGV[5], ARGV[7], ARGV[8])
  change(ARGV[6], ARGV[9],
    'chain', ARGV[2], 'function', ARGV[3], 'op', 'delete', 'mechanism', meta.mechanism or 'bundled',
    'fields', table.concat(names, ','), 'version', version, 'node', ARGV[4], 'size', '0',
    'checksum', '', 'ts', ARGV[5])
  return {'ok', version}
end

local function apply_tombstone()
  local bad = wrong_types(false)
  if bad then return bad end
  local meta, digests = current()
  if seen() then return {'seen', meta.version} end
  local order = cmp(ARGV[3], meta.version)
  mark(ARGV[2])
  if order < 0 then return {'stale', meta.version} end
  if order == 0 then return {meta.deleted == '1' and 'duplicate' or 'conflict', meta.version} end
  tombstone(meta, digests, ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  return {'applied', ARGV[3]}
end

-- settle: 2 mechanism, 3 expiry in ms or '' (none), 4 single-key prefix, 5 the nonce, 6...
-- field names staged as single keys (<prefix><name>:staged). -> 1 committed | 0 dropped
local function settle()
  local single, ttl = ARGV[2] == 'single', ARGV[3]
  local committed = redis.call('GETDEL', KEYS[5]) == ARGV[5]
  local touched = {KEYS[2]}
  if single then
    for i = 6, #ARGV do
      local key = ARGV[4] .. ARGV[i]
      if committed then
        redis.call('RENAME', key .. ':staged', key)
        touched[#touched + 1] = key
      else
        redis.call('DEL', key .. ':staged')
      end
    end
  elseif committed then
    if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('RENAME', KEYS[4], KEYS[1]) end
    touched[#touched + 1] = KEYS[1]
  else
    redis.call('DEL', KEYS[4])
  end
  if not committed then return 0 end
  for _, key in ipairs(touched) do
    if ttl == '' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ttl) end
  end
  return 1
end

local op = ARGV[1]
if op == 'put' then return put()
elseif op == 'apply' then return apply(false)
elseif op == 'delta' then return apply(true)
elseif op == 'settle' then return settle()
elseif op == 'delete' then return delete()
elseif op == 'tombstone' then return apply_tombstone()
end
return redis.error_reply('unknown step ' .. tostring(op))
