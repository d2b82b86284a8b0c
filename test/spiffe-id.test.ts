import test from 'ava';
import fc from 'fast-check';
import { SpiffeId, SpiffeIdError, type SpiffeIdRule } from '../src/identity/spiffe-id.js';

const TD_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789._-'.split('');
const PATH_CHARS = [...TD_CHARS, ...'ABCDEFGHIJKLMNOPQRSTUVWXYZ'.split('')];
const ID_MAX_BYTES = 2048;

function ruleOf(input: string): SpiffeIdRule | 'accepted' {
  try {
    SpiffeId.parse(input);
    return 'accepted';
  } catch (err) {
    if (err instanceof SpiffeIdError) return err.rule;
    throw err;
  }
}

const accepted: [string, string, string][] = [
  // [input, trust domain, path]
  ['spiffe://example.org', 'example.org', ''],
  ['spiffe://example.org/ns/default/sa/web', 'example.org', '/ns/default/sa/web'],
  ['spiffe://a', 'a', ''],
  ['spiffe://my_td-1.example/Path.With-Mixed_Case/...', 'my_td-1.example', '/Path.With-Mixed_Case/...'],
  ['spiffe://td/a/.b/c..', 'td', '/a/.b/c..'],
];
for (const [input, trustDomain, path] of accepted) {
  test(`accepts ${input}`, (t) => {
    const id = SpiffeId.parse(input);
    t.is(id.trustDomain, trustDomain);
    t.is(id.path, path);
    t.is(id.isTrustDomainId, path === '');
    t.is(id.toString(), input);
    t.is(JSON.stringify({ id }), JSON.stringify({ id: input }));
  });
}

const rejected: [string, SpiffeIdRule][] = [
  ['', 'empty'],
  [`spiffe://example.org/${'a'.repeat(ID_MAX_BYTES)}`, 'too_long'],
  [`spiffe://example.org/${'é'.repeat(1020)}`, 'too_long'], // 2040 bytes of path in 1020 characters
  ['SPIFFE://example.org/a', 'scheme'],
  ['Spiffe://example.org/a', 'scheme'],
  ['https://example.org/a', 'scheme'],
  ['spiffe:/example.org/a', 'scheme'],
  ['example.org/a', 'scheme'],
  ['spiffe://', 'trust_domain_missing'],
  ['spiffe:///path', 'trust_domain_missing'],
  [`spiffe://${'a'.repeat(256)}/x`, 'trust_domain_too_long'],
  ['spiffe://Example.org/a', 'trust_domain_chars'],
  ['spiffe://exa%41mple.org/a', 'trust_domain_chars'],
  ['spiffe://exa mple.org', 'trust_domain_chars'],
  ['spiffe://bücher.example/a', 'trust_domain_chars'],
  ['spiffe://user@example.org/a', 'userinfo'],
  ['spiffe://user:secret@example.org/a', 'userinfo'],
  ['spiffe://example.org:8443/a', 'port'],
  ['spiffe://example.org/a?b=c', 'query'],
  ['spiffe://example.org?x', 'query'],
  ['spiffe://example.org/a#frag', 'fragment'],
  ['spiffe://example.org#frag', 'fragment'],
  // Found while writing these tests: a "?" inside a fragment used to be reported as a query.
  ['spiffe://example.org/a#frag?not-a-query', 'fragment'],
  ['spiffe://example.org/a?q#f', 'query'],
  ['spiffe://example.org/a//b', 'path_empty_segment'],
  ['spiffe://example.org//a', 'path_empty_segment'],
  ['spiffe://example.org/a/./b', 'path_dot_segment'],
  ['spiffe://example.org/a/../b', 'path_dot_segment'],
  ['spiffe://example.org/..', 'path_dot_segment'],
  ['spiffe://example.org/', 'path_trailing_slash'],
  ['spiffe://example.org/a/', 'path_trailing_slash'],
  ['spiffe://example.org/a%2Fb', 'path_chars'],
  ['spiffe://example.org/a b', 'path_chars'],
  ['spiffe://example.org/a@b', 'path_chars'],
  ['spiffe://example.org/a:b', 'path_chars'],
  ['spiffe://example.org/ü', 'path_chars'],
];
for (const [input, rule] of rejected) {
  test(`rejects ${JSON.stringify(input.length > 60 ? `${input.slice(0, 57)}...` : input)} with rule ${rule}`, (t) => {
    const err = t.throws(() => SpiffeId.parse(input), { instanceOf: SpiffeIdError });
    t.is(err.rule, rule);
    t.true(err.message.length > 0 && !err.message.includes('\n'));
    t.is(SpiffeId.tryParse(input), undefined);
  });
}

test('checkTrustDomain applies the trust domain rules to a bare name', (t) => {
  t.notThrows(() => SpiffeId.checkTrustDomain('example.org'));
  t.notThrows(() => SpiffeId.checkTrustDomain('a'.repeat(255)));
  const cases: [string, SpiffeIdRule][] = [
    ['', 'trust_domain_missing'],
    ['a'.repeat(256), 'trust_domain_too_long'],
    ['Example.org', 'trust_domain_chars'],
    ['user@example.org', 'userinfo'],
    ['example.org:443', 'port'],
  ];
  for (const [name, rule] of cases) {
    t.is(t.throws(() => SpiffeId.checkTrustDomain(name), { instanceOf: SpiffeIdError }).rule, rule, name);
  }
});

test('equals compares trust domain and path', (t) => {
  const a = SpiffeId.parse('spiffe://example.org/a');
  t.true(a.equals(SpiffeId.parse('spiffe://example.org/a')));
  t.false(a.equals(SpiffeId.parse('spiffe://example.org/b')));
  t.false(a.equals(SpiffeId.parse('spiffe://example.com/a')));
  t.false(a.equals(SpiffeId.parse('spiffe://example.org')));
});

// ---- property tests ------------------------------------------------------------------------

const trustDomainArb = fc.string({ unit: fc.constantFrom(...TD_CHARS), minLength: 1, maxLength: 255 });
const segmentArb = fc
  .string({ unit: fc.constantFrom(...PATH_CHARS), minLength: 1, maxLength: 40 })
  .filter((segment) => segment !== '.' && segment !== '..');
const pathArb = fc.array(segmentArb, { maxLength: 12 }).map((segments) => segments.map((segment) => `/${segment}`).join(''));
const validIdArb = fc
  .tuple(trustDomainArb, pathArb)
  .map(([td, path]) => `spiffe://${td}${path}`)
  .filter((id) => id.length <= ID_MAX_BYTES);
/** Valid IDs with at least one path segment, as [prefix "spiffe://td", segments]. */
const idPartsArb = fc.tuple(
  fc.string({ unit: fc.constantFrom(...TD_CHARS), minLength: 1, maxLength: 60 }),
  fc.array(segmentArb, { minLength: 1, maxLength: 8 }),
);

test('property: every generated valid ID parses and round-trips', (t) => {
  fc.assert(
    fc.property(validIdArb, (input) => {
      const id = SpiffeId.parse(input);
      const again = SpiffeId.parse(id.toString());
      return id.toString() === input && again.equals(id) && `spiffe://${id.trustDomain}${id.path}` === input;
    }),
    { numRuns: 500 },
  );
  t.pass();
});

/** "spiffe://ttt/sss/sss..." of exactly `length` bytes, with segments of `segmentLength` characters. */
function idOfLength(tdLength: number, length: number, segmentLength: number): string {
  const prefix = `spiffe://${'t'.repeat(tdLength)}`;
  const path = ['/', ...'s'.repeat(length - prefix.length - 1)];
  // A "/" every segmentLength+1 characters, never first, last or next to another "/".
  for (let i = segmentLength + 1; i < path.length - 1; i += segmentLength + 1) path[i] = '/';
  return prefix + path.join('');
}

test('property: IDs of up to 2048 bytes are accepted, one byte more is too_long', (t) => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 255 }),
      fc.integer({ min: 1000, max: ID_MAX_BYTES }),
      fc.integer({ min: 1, max: 300 }),
      (tdLength, length, segmentLength) => {
        const id = idOfLength(tdLength, length, segmentLength);
        return id.length === length && SpiffeId.parse(id).toString() === id && (length < ID_MAX_BYTES || ruleOf(`${id}x`) === 'too_long');
      },
    ),
    { numRuns: 300 },
  );
  t.is(ruleOf(idOfLength(255, ID_MAX_BYTES, 1)), 'accepted');
  t.is(ruleOf(idOfLength(255, ID_MAX_BYTES + 1, 1)), 'too_long');
});

/** A generator of broken IDs paired with the rule each one breaks. */
const broken = (input: string, rule: SpiffeIdRule): [string, SpiffeIdRule] => [input, rule];
const brokenIdArb: fc.Arbitrary<[string, SpiffeIdRule]> = fc.oneof(
  fc
    .tuple(fc.constantFrom('SPIFFE://', 'Spiffe://', 'spiffe:/', 'spiffe:', 'http://', 'spiffe//', ''), idPartsArb)
    .map(([scheme, [td, segments]]) => broken(`${scheme}${td}/${segments.join('/')}`, 'scheme')),
  fc
    .tuple(idPartsArb, fc.nat(), fc.constantFrom(...'ABCXYZ!$%&\'()*+,;=~ \té'.split('')))
    .map(([[td, segments], at, bad]) => {
      const position = at % (td.length + 1);
      return broken(`spiffe://${td.slice(0, position)}${bad}${td.slice(position)}/${segments.join('/')}`, 'trust_domain_chars');
    }),
  fc
    .tuple(idPartsArb, fc.nat(), fc.nat(), fc.constantFrom(...'!$%&\'()*+,;=~ @:é'.split('')))
    .map(([[td, segments], which, at, bad]) => {
      const index = which % segments.length;
      const segment = segments[index]!;
      const position = at % (segment.length + 1);
      segments[index] = `${segment.slice(0, position)}${bad}${segment.slice(position)}`;
      return broken(`spiffe://${td}/${segments.join('/')}`, 'path_chars');
    }),
  fc
    .tuple(idPartsArb, fc.nat(), fc.constantFrom('.', '..'))
    .map(([[td, segments], at, dot]) => {
      segments.splice(at % (segments.length + 1), 0, dot);
      return broken(`spiffe://${td}/${segments.join('/')}`, 'path_dot_segment');
    }),
  fc
    .tuple(idPartsArb, fc.nat())
    .map(([[td, segments], at]) => {
      segments.splice(at % segments.length, 0, ''); // never last: that would be a trailing slash
      return broken(`spiffe://${td}/${segments.join('/')}`, 'path_empty_segment');
    }),
  idPartsArb.map(([td, segments]) => broken(`spiffe://${td}/${segments.join('/')}/`, 'path_trailing_slash')),
  fc
    .tuple(idPartsArb, fc.string({ maxLength: 20 }))
    .map(([[td, segments], query]) => broken(`spiffe://${td}/${segments.join('/')}?${query}`, 'query')),
  fc
    .tuple(idPartsArb, fc.string({ maxLength: 20 }))
    .map(([[td, segments], fragment]) => broken(`spiffe://${td}/${segments.join('/')}#${fragment}`, 'fragment')),
  fc
    .tuple(idPartsArb, fc.string({ unit: fc.constantFrom(...TD_CHARS), minLength: 1, maxLength: 10 }))
    .map(([[td, segments], user]) => broken(`spiffe://${user}@${td}/${segments.join('/')}`, 'userinfo')),
  fc
    .tuple(idPartsArb, fc.integer({ min: 0, max: 65535 }))
    .map(([[td, segments], port]) => broken(`spiffe://${td}:${port}/${segments.join('/')}`, 'port')),
  fc
    .tuple(fc.integer({ min: 256, max: 1000 }), fc.array(segmentArb, { maxLength: 3 }))
    .map(([length, segments]) => broken(`spiffe://${'d'.repeat(length)}${segments.map((s) => `/${s}`).join('')}`, 'trust_domain_too_long')),
  fc.array(segmentArb, { maxLength: 3 }).map((segments) => broken(`spiffe://${segments.map((s) => `/${s}`).join('')}`, 'trust_domain_missing')),
  fc.integer({ min: ID_MAX_BYTES + 1, max: 5000 }).map((length) => broken(`spiffe://td/${'x'.repeat(length - 12)}`, 'too_long')),
);

test('property: generated invalid IDs are rejected with the rule they break', (t) => {
  fc.assert(
    fc.property(brokenIdArb, ([input, rule]) => ruleOf(input) === rule),
    { numRuns: 2000 },
  );
  t.pass();
});

test('property: parsing never throws anything but SpiffeIdError', (t) => {
  fc.assert(
    fc.property(fc.oneof(fc.string(), fc.string().map((s) => `spiffe://${s}`)), (input) => {
      const rule = ruleOf(input); // rethrows anything that is not a SpiffeIdError
      return rule === 'accepted' ? SpiffeId.parse(input).toString() === input : true;
    }),
    { numRuns: 1000 },
  );
  t.pass();
});
