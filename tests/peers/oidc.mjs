// A real OpenID provider (oidc-provider) for the Mobius SSO tests.
//
//   node oidc.mjs --redirect-uri <uri> [--redirect-uri <uri> ...]
//
// Listens on a free port of 127.0.0.1 and prints one JSON line
// {"issuer": "http://127.0.0.1:<port>"} once ready; exits when its standard
// input closes (the test that started it is gone).
//
// Test-only parts, none of which a real IdP would have:
// - POST /test/next-login {sub, email, email_verified, name, groups} picks who
//   the next interaction signs in as; interactions then finish by themselves
//   (login and consent), so a test drives the browser flow with plain HTTP.
// - Clients whose ID tokens are deliberately wrong, re-signed with the
//   provider's own key: `mobius-expired` (exp in the past) and
//   `mobius-otheraud` (issued for another client id).
// - POST /test/rotate-key: from then on ID tokens are signed with a new key
//   (new `kid`) that /jwks also publishes, as an IdP rotating its keys does.

import http from 'node:http';
import Provider from 'oidc-provider';
import { exportJWK, generateKeyPair, SignJWT, decodeJwt } from 'jose';

const redirectUris = [];
for (let i = 2; i < process.argv.length; i++) {
  if (process.argv[i] === '--redirect-uri') redirectUris.push(process.argv[++i]);
}

const accounts = new Map();
let nextLogin = null;

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'test-key-1', alg: 'RS256', use: 'sig' };

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const client = (client_id) => ({
  client_id,
  client_secret: `${client_id}-secret`,
  redirect_uris: redirectUris,
  grant_types: ['authorization_code'],
  response_types: ['code'],
});

const provider = new Provider(issuer, {
  clients: [client('mobius'), client('mobius-expired'), client('mobius-otheraud')],
  jwks: { keys: [jwk] },
  findAccount: async (ctx, sub) =>
    accounts.has(sub)
      ? { accountId: sub, claims: async () => ({ sub, ...accounts.get(sub) }) }
      : undefined,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  cookies: { keys: ['mobius-test-only-cookie-key'] },
});
provider.proxy = false;

let rotated = null;

// Tampering for the negative tests, after the provider answered /token.
provider.use(async (ctx, next) => {
  await next();
  if (rotated && ctx.path === '/jwks' && ctx.body?.keys) {
    ctx.body = { keys: [...ctx.body.keys, rotated.publicJwk] };
    return;
  }
  const clientId = ctx.oidc?.client?.clientId;
  if (ctx.path !== '/token' || !ctx.body?.id_token) return;
  if (rotated && clientId === 'mobius') {
    ctx.body = {
      ...ctx.body,
      id_token: await new SignJWT(decodeJwt(ctx.body.id_token))
        .setProtectedHeader({ alg: 'RS256', kid: rotated.publicJwk.kid })
        .sign(rotated.privateKey),
    };
    return;
  }
  if (clientId !== 'mobius-expired' && clientId !== 'mobius-otheraud') return;
  const claims = decodeJwt(ctx.body.id_token);
  const now = Math.floor(Date.now() / 1000);
  if (clientId === 'mobius-expired') {
    claims.iat = now - 7200;
    claims.exp = now - 3600;
  } else {
    claims.aud = 'someone-else';
    claims.azp = 'someone-else';
  }
  ctx.body = {
    ...ctx.body,
    id_token: await new SignJWT(claims)
      .setProtectedHeader({ alg: 'RS256', kid: jwk.kid })
      .sign(privateKey),
  };
});

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    if (!nextLogin) {
      res.statusCode = 409;
      return res.end('no next login set (POST /test/next-login)');
    }
    return provider.interactionFinished(req, res, { login: { accountId: nextLogin } }, {
      mergeWithLastSubmission: false,
    });
  }
  const { prompt: { details: missing }, params, session: { accountId } } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { consent: { grantId } }, {
    mergeWithLastSubmission: true,
  });
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  try {
    if (req.url.startsWith('/interaction/')) return await interaction(req, res);
    if (req.method === 'POST' && req.url === '/test/next-login') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const account = JSON.parse(body);
      accounts.set(account.sub, { ...account });
      nextLogin = account.sub;
      res.statusCode = 204;
      return res.end();
    }
    if (req.method === 'POST' && req.url === '/test/rotate-key') {
      const pair = await generateKeyPair('RS256', { extractable: true });
      const pub = { ...(await exportJWK(pair.publicKey)), kid: 'test-key-2', alg: 'RS256', use: 'sig' };
      rotated = { privateKey: pair.privateKey, publicJwk: pub };
      res.statusCode = 204;
      return res.end();
    }
    return callback(req, res);
  } catch (err) {
    res.statusCode = 500;
    res.end(String(err));
  }
});

process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.resume();
console.log(JSON.stringify({ issuer }));
