//! Minimal in-memory backends for router tests (the API's behaviour, not the stores',
//! is under test here; the stores have their own conformance suites).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tp_core::*;

fn unavailable(backend: &'static str) -> Error {
    Error::Unavailable {
        backend,
        source: "switched off by the test".into(),
    }
}

#[derive(Debug, Default)]
pub(crate) struct MemMetadata {
    tenants: Mutex<Vec<Tenant>>,
    users: Mutex<Vec<User>>,
    devices: Mutex<Vec<Device>>,
    attrs: Mutex<BTreeMap<(DeviceId, String), KeyValue>>,
}

fn page<T: Clone>(rows: Vec<T>, p: Page) -> Paged<T> {
    let total = rows.len() as u64;
    let items = rows
        .into_iter()
        .skip(p.offset as usize)
        .take(p.limit as usize)
        .collect();
    Paged { items, total }
}

#[async_trait]
impl MetadataStore for MemMetadata {
    fn backend(&self) -> &'static str {
        "mem"
    }
    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }
    async fn create_tenant(&self, tenant: &Tenant) -> Result<()> {
        self.tenants.lock().unwrap().push(tenant.clone());
        Ok(())
    }
    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>> {
        Ok(self
            .tenants
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.id == id)
            .cloned())
    }
    async fn list_tenants(&self, p: Page) -> Result<Paged<Tenant>> {
        Ok(page(self.tenants.lock().unwrap().clone(), p))
    }
    async fn create_user(&self, user: &User) -> Result<()> {
        let mut users = self.users.lock().unwrap();
        if users.iter().any(|u| u.email == user.email) {
            return Err(Error::AlreadyExists {
                entity: "user",
                id: user.email.clone(),
            });
        }
        users.push(user.clone());
        Ok(())
    }
    async fn get_user(&self, id: UserId) -> Result<Option<User>> {
        Ok(self
            .users
            .lock()
            .unwrap()
            .iter()
            .find(|u| u.id == id)
            .cloned())
    }
    async fn get_user_by_email(&self, email: &str) -> Result<Option<User>> {
        Ok(self
            .users
            .lock()
            .unwrap()
            .iter()
            .find(|u| u.email == email)
            .cloned())
    }
    async fn update_user(&self, _user: &User) -> Result<()> {
        unimplemented!()
    }
    async fn delete_user(&self, tenant: TenantId, id: UserId) -> Result<()> {
        self.users
            .lock()
            .unwrap()
            .retain(|u| !(u.tenant_id == tenant && u.id == id));
        Ok(())
    }
    async fn list_users(&self, tenant: TenantId, p: Page) -> Result<Paged<User>> {
        let rows = self
            .users
            .lock()
            .unwrap()
            .iter()
            .filter(|u| u.tenant_id == tenant)
            .cloned()
            .collect();
        Ok(page(rows, p))
    }
    async fn count_users(&self) -> Result<u64> {
        Ok(self.users.lock().unwrap().len() as u64)
    }
    async fn create_device(&self, device: &Device) -> Result<()> {
        let mut devices = self.devices.lock().unwrap();
        if devices.iter().any(|d| {
            d.device_number == device.device_number
                || d.credentials.username == device.credentials.username
        }) {
            return Err(Error::AlreadyExists {
                entity: "device",
                id: device.device_number.clone(),
            });
        }
        devices.push(device.clone());
        Ok(())
    }
    async fn get_device(&self, tenant: TenantId, id: DeviceId) -> Result<Option<Device>> {
        Ok(self
            .devices
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.id == id && d.tenant_id == tenant)
            .cloned())
    }
    async fn get_device_by_id(&self, id: DeviceId) -> Result<Option<Device>> {
        Ok(self
            .devices
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.id == id)
            .cloned())
    }
    async fn get_device_by_username(&self, username: &str) -> Result<Option<Device>> {
        Ok(self
            .devices
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.credentials.username == username)
            .cloned())
    }
    async fn get_device_by_number(&self, number: &str) -> Result<Option<Device>> {
        Ok(self
            .devices
            .lock()
            .unwrap()
            .iter()
            .find(|d| d.device_number == number)
            .cloned())
    }
    async fn list_devices(&self, tenant: TenantId, filter: &DeviceFilter) -> Result<Paged<Device>> {
        let search = filter.search.as_ref().map(|s| s.to_lowercase());
        let rows = self
            .devices
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.tenant_id == tenant)
            .filter(|d| {
                search.as_ref().is_none_or(|s| {
                    d.name.to_lowercase().contains(s) || d.device_number.to_lowercase().contains(s)
                })
            })
            .cloned()
            .collect();
        Ok(page(rows, filter.page))
    }
    async fn update_device(&self, device: &Device) -> Result<()> {
        let mut devices = self.devices.lock().unwrap();
        let d = devices
            .iter_mut()
            .find(|d| d.id == device.id && d.tenant_id == device.tenant_id)
            .ok_or_else(|| Error::not_found("device", device.id))?;
        *d = device.clone();
        Ok(())
    }
    async fn delete_device(&self, tenant: TenantId, id: DeviceId) -> Result<()> {
        let mut devices = self.devices.lock().unwrap();
        let before = devices.len();
        devices.retain(|d| !(d.id == id && d.tenant_id == tenant));
        if devices.len() == before {
            return Err(Error::not_found("device", id));
        }
        Ok(())
    }
    async fn set_device_online(&self, _id: DeviceId, _online: bool, _at: Timestamp) -> Result<()> {
        unimplemented!()
    }
    async fn upsert_attributes(&self, device: DeviceId, attrs: &[KeyValue]) -> Result<()> {
        let mut map = self.attrs.lock().unwrap();
        for a in attrs {
            map.insert((device, a.key.clone()), a.clone());
        }
        Ok(())
    }
    async fn get_attributes(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<KeyValue>> {
        Ok(self
            .attrs
            .lock()
            .unwrap()
            .iter()
            .filter(|((d, k), _)| *d == device && keys.is_none_or(|ks| ks.contains(k)))
            .map(|(_, v)| v.clone())
            .collect())
    }
    async fn create_command(&self, _c: &CommandLog) -> Result<()> {
        unimplemented!()
    }
    async fn update_command(&self, _c: &CommandLog) -> Result<()> {
        unimplemented!()
    }
    async fn get_command_by_message_id(
        &self,
        _d: DeviceId,
        _m: &str,
    ) -> Result<Option<CommandLog>> {
        unimplemented!()
    }
    async fn list_commands(
        &self,
        _t: TenantId,
        _d: DeviceId,
        _p: Page,
    ) -> Result<Paged<CommandLog>> {
        unimplemented!()
    }
}

#[derive(Debug, Default)]
pub(crate) struct MemTimeSeries {
    points: Mutex<BTreeMap<(DeviceId, String, Timestamp), Value>>,
    events: Mutex<Vec<DeviceEvent>>,
}

#[async_trait]
impl TimeSeriesStore for MemTimeSeries {
    fn backend(&self) -> &'static str {
        "mem"
    }
    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }
    async fn write(&self, points: &[TelemetryPoint]) -> Result<()> {
        let mut map = self.points.lock().unwrap();
        for p in points {
            map.insert((p.device_id, p.key.clone(), p.ts), p.value.clone());
        }
        Ok(())
    }
    async fn latest(&self, device: DeviceId, keys: Option<&[String]>) -> Result<Vec<KeyValue>> {
        let mut latest: BTreeMap<String, KeyValue> = BTreeMap::new();
        for ((d, k, ts), v) in self.points.lock().unwrap().iter() {
            if *d == device && keys.is_none_or(|ks| ks.contains(k)) {
                latest.insert(
                    k.clone(),
                    KeyValue {
                        key: k.clone(),
                        ts: *ts,
                        value: v.clone(),
                    },
                );
            }
        }
        Ok(latest.into_values().collect())
    }
    async fn query(&self, q: &TsQuery) -> Result<Vec<KeyValue>> {
        let mut by_key: BTreeMap<String, Vec<KeyValue>> = BTreeMap::new();
        for ((d, k, ts), v) in self.points.lock().unwrap().iter() {
            if *d == q.device_id
                && (q.keys.is_empty() || q.keys.contains(k))
                && *ts >= q.start
                && *ts < q.end
            {
                by_key.entry(k.clone()).or_default().push(KeyValue {
                    key: k.clone(),
                    ts: *ts,
                    value: v.clone(),
                });
            }
        }
        let mut out = Vec::new();
        for (key, rows) in by_key {
            let mut rows = match q.aggregation {
                None => rows,
                Some((agg, interval)) => {
                    let mut buckets: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
                    for r in rows {
                        let b = q.start + (r.ts - q.start) / interval * interval;
                        buckets.entry(b).or_default().push(r.value);
                    }
                    buckets
                        .into_iter()
                        .map(|(ts, vals)| {
                            let nums: Vec<f64> = vals.iter().filter_map(Value::as_f64).collect();
                            let value = match agg {
                                Aggregation::Count => Value::Integer(vals.len() as i64),
                                Aggregation::Sum => Value::Float(nums.iter().sum()),
                                Aggregation::Avg => {
                                    Value::Float(nums.iter().sum::<f64>() / nums.len() as f64)
                                }
                                Aggregation::Min => {
                                    Value::Float(nums.iter().cloned().fold(f64::INFINITY, f64::min))
                                }
                                Aggregation::Max => Value::Float(
                                    nums.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                                ),
                            };
                            KeyValue {
                                key: key.clone(),
                                ts,
                                value,
                            }
                        })
                        .collect()
                }
            };
            if q.order == Order::Desc {
                rows.reverse();
            }
            rows.truncate(q.limit.unwrap_or(u64::MAX) as usize);
            out.extend(rows);
        }
        Ok(out)
    }
    async fn delete_range(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<u64> {
        let mut map = self.points.lock().unwrap();
        let before = map.len();
        map.retain(|(d, k, ts), _| {
            !(*d == device && keys.is_none_or(|ks| ks.contains(k)) && *ts >= start && *ts < end)
        });
        Ok((before - map.len()) as u64)
    }
    async fn write_events(&self, events: &[DeviceEvent]) -> Result<()> {
        self.events.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
    async fn query_events(
        &self,
        device: DeviceId,
        start: Timestamp,
        end: Timestamp,
        limit: u64,
        order: Order,
    ) -> Result<Vec<DeviceEvent>> {
        let mut rows: Vec<DeviceEvent> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.device_id == device && e.ts >= start && e.ts < end)
            .cloned()
            .collect();
        rows.sort_by_key(|e| e.ts);
        if order == Order::Desc {
            rows.reverse();
        }
        rows.truncate(limit as usize);
        Ok(rows)
    }
}

#[derive(Debug, Default)]
pub(crate) struct MemCache {
    map: Mutex<HashMap<String, Vec<u8>>>,
    pub(crate) down: AtomicBool,
}

#[async_trait]
impl Cache for MemCache {
    fn backend(&self) -> &'static str {
        "mem"
    }
    async fn healthcheck(&self) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(unavailable("mem"));
        }
        Ok(())
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &str, value: &[u8], _ttl: Option<Duration>) -> Result<()> {
        self.map
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.to_vec());
        Ok(())
    }
    async fn set_nx(&self, key: &str, value: &[u8], _ttl: Option<Duration>) -> Result<bool> {
        let mut map = self.map.lock().unwrap();
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_owned(), value.to_vec());
        Ok(true)
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.map.lock().unwrap().remove(key).is_some())
    }
}
