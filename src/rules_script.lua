-- ngx_http_rules_module state script (format v1; see src/rules_state.h).
-- KEYS[i]: a state key; ARGV[1]: the event time (ms);
-- ARGV[1 + i]: the operation for KEYS[i].
-- Returns, per key, the concatenated digests of the matched rules.
-- The same algorithm, in C: src/rules_state.c.
local now = tonumber(ARGV[1])
local tm = redis.call('TIME')
local wall = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local sub, byte, rep = string.sub, string.byte, string.rep
local tunpack = unpack
local pack, unpack = struct.pack, struct.unpack
local band, rshift = bit.band, bit.rshift
local concat = table.concat
local NONE = -1

local function count(e, rec)
  local n = 0
  if rec then n = unpack('<H', rec) end
  local min, ts, k, placed = e.min, {}, 0, false
  for i = 0, n - 1 do
    if k >= min then break end
    local t = unpack('<d', rec, 3 + 8 * i)
    if not placed and now >= t then
      k = k + 1; ts[k] = now; placed = true
      if k == min then break end
    end
    k = k + 1; ts[k] = t
  end
  if not placed and k < min then k = k + 1; ts[k] = now end
  local payload = pack('<H' .. rep('d', k), k, tunpack(ts))
  if k >= min then return payload, NONE, ts[min] + e.within end
  return payload, 0, 0
end

local function distinct(e, rec)
  local n, vals, times = 0, {}, {}
  if rec then
    n = unpack('<H', rec)
    local p = 3
    for i = 1, n do
      local t, vlen = unpack('<dH', rec, p)
      times[i] = t
      vals[i] = sub(rec, p + 10, p + 9 + vlen)
      p = p + 10 + vlen
    end
  end
  local tnew, found = now, 0
  for i = 1, n do
    if vals[i] == e.value then
      if times[i] > tnew then tnew = times[i] end
      found = i
      break
    end
  end
  local min, parts, k, placed, tk = e.min, {}, 0, false, 0
  for i = 1, n + 1 do
    if k >= min then break end
    local t = times[i] or 0
    if not placed and (i == n + 1 or tnew >= t) then
      k = k + 1; parts[k] = pack('<dH', tnew, #e.value) .. e.value
      tk = tnew; placed = true
      if k == min then break end
    end
    if i == n + 1 then break end
    if i ~= found then
      k = k + 1; parts[k] = pack('<dH', t, #vals[i]) .. vals[i]; tk = t
    end
  end
  local payload = pack('<H', k) .. concat(parts)
  if k >= min then return payload, NONE, tk + e.within end
  return payload, 0, 0
end

local function absence(e, rec)
  if e.action == 1 then return pack('<Bd', 0, NONE), 0, 0 end
  return pack('<Bd', 1, now), now + e.after, now + e.within
end

local function sequence(e, rec)
  local n = e.n
  local tc, S, F = NONE, {}, {}
  for i = 1, n - 1 do S[i] = NONE; F[i] = NONE end
  if rec and byte(rec, 1) == n then
    tc = unpack('<d', rec, 2)
    for i = 1, n - 1 do
      S[i] = unpack('<d', rec, 11 + 8 * (i - 1))
      F[i] = unpack('<d', rec, 11 + 8 * (n - 1) + 8 * (i - 1))
    end
  end
  local nS, nF, completed = {}, {}, false
  for i = 1, n - 1 do nS[i] = S[i]; nF[i] = NONE end
  -- steps are 0-based in the masks, 1-based in S and F
  for i = 0, n - 1 do
    if band(rshift(e.mask, i), 1) == 1 then
      local cand
      if i == 0 then cand = now
      elseif band(rshift(e.strict, i), 1) == 1 then cand = F[i]
      else cand = S[i] end
      if cand >= 0 then
        if i == n - 1 then
          if now - cand < e.within then completed = true end
        else
          if cand > nS[i + 1] then nS[i + 1] = cand end
          if cand > nF[i + 1] then nF[i + 1] = cand end
        end
      end
    end
  end
  if completed then
    tc = now
    for i = 1, n - 1 do nS[i] = NONE; nF[i] = NONE end
  end
  local fresh = 0
  for i = 1, n - 1 do if nF[i] >= 0 then fresh = 1 end end
  local parts = { pack('<BdB', n, tc, fresh) }
  for i = 1, n - 1 do parts[#parts + 1] = pack('<d', nS[i]) end
  for i = 1, n - 1 do parts[#parts + 1] = pack('<d', nF[i]) end
  local from, untl = 0, 0
  if tc >= 0 and e.hold > 0 then from, untl = NONE, tc + e.hold end
  return concat(parts), from, untl, completed
end

local machines = { count, distinct, absence, sequence }

local function record(e, rec, out, matched)
  local payload, from, untl, completed = machines[e.t](e, rec)
  out[#out + 1] = e.d .. pack('<BdddH', e.t, wall + e.ttl, from, untl,
                              #payload) .. payload
  if completed or (from <= now and now < untl) then
    matched[#matched + 1] = e.d
  end
end

local results = {}
for k = 1, #KEYS do
  local op, ents, order, pos = ARGV[k + 1], {}, {}, 1
  while pos <= #op do
    local e = { d = sub(op, pos, pos + 7) }
    e.t, e.ttl = unpack('<Bd', op, pos + 8)
    pos = pos + 17
    if e.t == 1 then
      e.min, e.within = unpack('<Hd', op, pos); pos = pos + 10
    elseif e.t == 2 then
      local vlen
      e.min, e.within, vlen = unpack('<HdH', op, pos)
      e.value = sub(op, pos + 12, pos + 11 + vlen); pos = pos + 12 + vlen
    elseif e.t == 3 then
      e.action, e.after, e.within = unpack('<Bdd', op, pos); pos = pos + 17
    else
      e.n, e.strict, e.within, e.hold, e.mask = unpack('<BI4ddI4', op, pos)
      pos = pos + 25
    end
    order[#order + 1] = e
    ents[e.d] = e
  end

  local state = redis.call('GET', KEYS[k])
  local out, matched, changed, maxexp, done = { 'R1' }, {}, false, 0, {}
  if state and sub(state, 1, 2) == 'R1' then
    local p, slen = 3, #state
    while p <= slen do
      local d = sub(state, p, p + 7)
      local typ, expire, from, untl, plen = unpack('<BdddH', state, p + 8)
      local ps, pe = p + 35, p + 34 + plen
      if expire <= wall then
        changed = true
      else
        local e = ents[d]
        if e and not done[d] then
          done[d] = true
          changed = true
          local rec = nil
          if typ == e.t then rec = sub(state, ps, pe) end
          record(e, rec, out, matched)
          expire = wall + e.ttl
        else
          if typ == 4 and byte(state, ps + 9) == 1 then
            -- this event breaks the strict chains of an untouched sequence
            local n = byte(state, ps)
            changed = true
            out[#out + 1] = sub(state, p, ps + 8) .. '\0'
                            .. sub(state, ps + 10, ps + 9 + 8 * (n - 1))
                            .. rep(pack('<d', NONE), n - 1)
          else
            out[#out + 1] = sub(state, p, pe)
          end
          if from <= now and now < untl then matched[#matched + 1] = d end
        end
        if expire > maxexp then maxexp = expire end
      end
      p = pe + 1
    end
  elseif state then
    changed = true
  end

  for _, e in ipairs(order) do
    if not done[e.d] then
      changed = true
      record(e, nil, out, matched)
      if wall + e.ttl > maxexp then maxexp = wall + e.ttl end
    end
  end

  if changed then
    if #out == 1 then
      if state then redis.call('DEL', KEYS[k]) end
    else
      local pttl = maxexp - wall
      if not (pttl >= 1) then pttl = 1 end
      if pttl > 31622400000 then pttl = 31622400000 end
      redis.call('SET', KEYS[k], concat(out), 'PX', string.format('%d', pttl))
    end
  end
  results[k] = concat(matched)
end
return results
