-- ngx_http_rules_module state script, value format R2 (src/rules_log.h).
-- It runs no state machine: per item it appends the event's operation to
-- the key's log, or reads the value, or swaps a folded snapshot in.
-- KEYS: the distinct state keys; ARGV: two strings per item,
-- meta = kind(B) key(H) x(d) y(d), then the body or the snapshot.
-- Returns { wall ms, one element per item }.
local pack, unpack = struct.pack, struct.unpack
local sub, floor = string.sub, math.floor
local call, pcall = redis.call, redis.pcall
local tm = call('TIME')
local wall = tonumber(tm[1]) * 1000 + floor(tonumber(tm[2]) / 1000)
local wallb = pack('<d', wall)
local res = { wall }
local argv, keys = ARGV, KEYS

local function value(key)
  local v = pcall('GET', key)
  if type(v) ~= 'string' then return false end -- none, or not a string
  return v
end

local function r2(v)
  return v and #v >= 18 and sub(v, 1, 2) == 'R2'
end

for i = 1, #argv, 2 do
  local kind, k, x, y = unpack('<BHdd', argv[i])
  local key = keys[k]
  local v = value(key)
  if kind == 1 then
    if x < 1 then x = 1 end
    if r2(v) then
      call('APPEND', key, wallb .. argv[i + 1])
      if wall + x > unpack('<d', v, 7) then
        local stamp = wall + x + floor(x / 4)
        call('PEXPIRE', key, stamp - wall)
        call('SETRANGE', key, 6, pack('<d', stamp))
      end
    else
      local snap, stamp = v or '', wall + x + floor(x / 4)
      call('SET', key, 'R2' .. pack('<I4dI4', wall % 4294967296, stamp, #snap)
                       .. snap .. wallb .. argv[i + 1], 'PX', stamp - wall)
    end
    res[#res + 1] = v
  elseif kind == 2 then
    res[#res + 1] = v
  else
    local ok = 0
    if r2(v) and #v >= y then
      local gen, stamp = unpack('<I4d', v, 3)
      if gen == x then
        local snap = argv[i + 1]
        if #snap == 0 and #v == y then
          call('DEL', key)
        else
          call('SET', key, 'R2' .. pack('<I4dI4', (gen + 1) % 4294967296,
                                       stamp, #snap)
                           .. snap .. sub(v, y + 1), 'KEEPTTL')
        end
        ok = 1
      end
    end
    res[#res + 1] = ok
  end
end
return res
