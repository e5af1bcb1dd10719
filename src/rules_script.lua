-- ngx_http_rules_module state script, value format R2 (src/rules_log.h).
-- It runs no state machine.  Per item, it stores a state the writer
-- computed when the value is still the one the writer based it on, or
-- appends the event's operation to the key's log, or reads the value,
-- or swaps in a folded snapshot.  KEYS: the distinct state keys; ARGV:
-- one string per item, meta = kind(B) key(H) ttl(d) pttl(d) gen(d)
-- newgen(d) length(d) split(I) (47 bytes), then the body (now oplen op),
-- a snapshot, or the body and a whole new value (split: the body's
-- length).  (kind 6: a whole entry follows, the writer's wall first.)
-- Returns { wall ms, one element per item }.
local pack, unpack = struct.pack, struct.unpack
local sub, floor = string.sub, math.floor
local call, pcall = redis.call, redis.pcall
local tm = call('TIME')
local wall = tonumber(tm[1]) * 1000 + floor(tonumber(tm[2]) / 1000)
local wallb = pack('<d', wall)
local res = { wall }
local argv, keys = ARGV, KEYS

-- a reply that is a string value, else false (none, or not a string)
local function str(v)
  if type(v) ~= 'string' then return false end
  return v
end

-- an R2 value, as the reader and RULES.STORE see one: the magic, a whole
-- header, a snapshot within the value, a gen that is a number and a
-- finite stamp; anything else is foreign
local huge = math.huge
local function r2(v)
  if not v or #v < 22 or sub(v, 1, 2) ~= 'R2' then return false end
  local gen, stamp, snaplen = unpack('<ddI4', v, 3)
  return snaplen <= #v - 22 and gen == gen and stamp == stamp
         and stamp ~= huge and stamp ~= -huge
end
-- a stamp further ahead of the clock is not one a writer set: moved
local ahead = 2 * 366 * 86400 * 1000

-- the value v plus an entry, as the key's new value
local function append(key, v, ttl, newgen, body, set)
  local need = wall + ttl
  if r2(v) then
    local stamp = unpack('<d', v, 11)
    if need > stamp or stamp > wall + ahead then
      stamp = need + floor(ttl / 4)
      if set then
        call('SET', key, sub(v, 1, 10) .. pack('<d', stamp) .. sub(v, 19)
                         .. wallb .. body, 'PX', stamp - wall)
      else
        call('APPEND', key, wallb .. body)
        call('PEXPIRE', key, stamp - wall)
        call('SETRANGE', key, 10, pack('<d', stamp))
      end
    elseif set then
      -- (a stamp no writer set may have a fraction: PX takes whole ms)
      call('SET', key, v .. wallb .. body, 'PX', floor(stamp - wall))
    else
      call('APPEND', key, wallb .. body)
    end
  else
    local snap, stamp = v or '', need + floor(ttl / 4)
    if v and not set then
      -- a value written by an earlier version (an R1 state) keeps the
      -- reach of its TTL, which covers every record it holds; ttl is
      -- only this event's rules'
      local left = call('PTTL', key)
      if left > 0 and wall + left > stamp then stamp = wall + left end
    end
    call('SET', key, 'R2' .. pack('<ddI4', newgen, stamp, #snap) .. snap
                     .. wallb .. body, 'PX', stamp - wall)
  end
end

for i = 1, #argv do
  -- an item: its meta, then its argument from byte 48
  local a = argv[i]
  local kind, k, ttl, pttl, gen, newgen, len, split =
    unpack('<BHdddddI4', a)
  local key = keys[k]
  if ttl < 1 then ttl = 1 end
  if kind == 4 or kind == 5 then
    local body, new, old = sub(a, 48, 47 + split), sub(a, 48 + split), nil
    if kind == 5 then
      old = pcall('SET', key, new, 'PX', pttl, 'NX', 'GET')
    elseif pttl > 0 then
      old = pcall('SET', key, new, 'PX', pttl, 'GET')
    else
      old = pcall('SET', key, new, 'KEEPTTL', 'GET')
    end
    if type(old) == 'table' and old.err then
      -- OOM and the like fail the call; a key that is not a string is
      -- replaced by a value of its own
      if sub(old.err, 1, 9) ~= 'WRONGTYPE' then
        return redis.error_reply(old.err)
      end
      call('DEL', key)
      append(key, false, ttl, newgen, body, true)
      res[#res + 1] = false
    else
      old = str(old)
      if kind == 5 then
        if not old then
          res[#res + 1] = 1
        else
          append(key, old, ttl, newgen, body, false)
          res[#res + 1] = old
        end
      elseif old and #old == len and r2(old)
             and unpack('<d', old, 3) == gen then
        res[#res + 1] = 1
      else
        -- another writer changed it: put back what an append makes
        append(key, old, ttl, newgen, body, true)
        res[#res + 1] = old
      end
    end
  elseif kind == 6 then
    -- the entry carries the writer's clock; the body follows it
    local arg = sub(a, 48)
    local head = str(pcall('GETRANGE', key, 0, 9))
    if head and #head == 10 and sub(head, 1, 2) == 'R2'
       and unpack('<d', head, 3) == gen and call('STRLEN', key) == len then
      call('APPEND', key, arg)
      if pttl > 0 then
        -- the stamp: the writer's clock (the entry's first bytes) + pttl
        call('PEXPIRE', key, pttl)
        call('SETRANGE', key, 10, pack('<d', unpack('<d', arg) + pttl))
      end
      res[#res + 1] = 1
    else
      local v = str(pcall('GET', key))
      append(key, v, ttl, newgen, sub(a, 56), false)
      res[#res + 1] = v
    end
  elseif kind == 2 then
    res[#res + 1] = str(pcall('GET', key))
  elseif kind == 1 then
    local v = str(pcall('GET', key))
    append(key, v, ttl, newgen, sub(a, 48), false)
    res[#res + 1] = v
  else
    local v, ok, arg = str(pcall('GET', key)), 0, sub(a, 48)
    if r2(v) and #v >= len and unpack('<d', v, 3) == gen then
      if #arg == 0 and #v == len then
        call('DEL', key)
      else
        call('SET', key, 'R2' .. pack('<dd', newgen, unpack('<d', v, 11))
                         .. pack('<I4', #arg) .. arg .. sub(v, len + 1),
             'KEEPTTL')
      end
      ok = 1
    end
    res[#res + 1] = ok
  end
end
return res
