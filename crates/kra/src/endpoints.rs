//! Every endpoint, its path under each profile (§2.1, §2.6, §2.7) and its call class.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

/// How a client reaches a control unit.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Profile {
    /// KRA's OSCU server: flat paths, identity in `tin`/`bhfId`/`cmcKey` headers.
    Oscu,
    /// A local VSCU JAR: RRA-style paths (`/trnsSales/saveSales`), identity in the body too.
    Vscu,
    /// KRA's GavaConnect (Apigee) gateway: OAuth bearer token, renamed paths, wrapped envelope.
    GavaConnect,
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "oscu" => Ok(Profile::Oscu),
            "vscu" => Ok(Profile::Vscu),
            "gavaconnect" => Ok(Profile::GavaConnect),
            other => Err(format!(
                "unknown control-unit profile {other:?}: expected oscu, vscu or gavaconnect"
            )),
        }
    }
}

/// What kind of call an endpoint is, for timeouts: initialisation and the big reference
/// lists are slow at KRA (Odoo waits 30 s and 120 s), a sale should be quick.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CallClass {
    Init,
    Lookup,
    Save,
    Sale,
}

macro_rules! endpoints {
    ($($name:ident: $oscu:literal, $vscu:literal, $gateway:literal, $class:ident;)*) => {
        /// An endpoint of the control-unit API.
        #[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
        pub enum EndpointName {
            $($name,)*
        }

        impl EndpointName {
            pub const ALL: &'static [EndpointName] = &[$(EndpointName::$name,)*];

            /// The OSCU name, which is also the path under the OSCU profile (`/saveItem`).
            pub fn oscu_name(self) -> &'static str {
                match self { $(EndpointName::$name => $oscu,)* }
            }

            /// The path (with its leading slash) under a profile.
            pub fn path(self, profile: Profile) -> &'static str {
                match (self, profile) {
                    $((EndpointName::$name, Profile::Oscu) => concat!("/", $oscu),)*
                    $((EndpointName::$name, Profile::Vscu) => $vscu,)*
                    $((EndpointName::$name, Profile::GavaConnect) => concat!("/", $gateway),)*
                }
            }

            pub fn call_class(self) -> CallClass {
                match self { $(EndpointName::$name => CallClass::$class,)* }
            }

            /// The endpoint a path names under a profile.
            pub fn from_path(path: &str, profile: Profile) -> Option<EndpointName> {
                let path = path.trim_end_matches('/');
                EndpointName::ALL.iter().copied().find(|name| name.path(profile) == path)
            }
        }
    };
}

// VSCU paths are the RRA VSDC family that Kenyan VSCU users call (§2.7); where that family
// has no name (invoice lookup, reports), the OSCU name under the same style.
endpoints! {
    SelectInitOsdcInfo: "selectInitOsdcInfo", "/initializer/selectInitInfo", "initialize", Init;
    SelectCodeList: "selectCodeList", "/code/selectCodes", "selectCodeList", Lookup;
    SelectItemClsList: "selectItemClsList", "/itemClass/selectItemsClass", "selectItemClass", Lookup;
    SelectCustomer: "selectCustomer", "/customers/selectCustomer", "customerPinInfo", Lookup;
    SelectBhfList: "selectBhfList", "/branches/selectBranches", "branchList", Lookup;
    SelectNoticeList: "selectNoticeList", "/notices/selectNotices", "selectNoticeList", Lookup;
    SaveBhfCustomer: "saveBhfCustomer", "/branches/saveBrancheCustomers", "branchSendCustomerInfo", Save;
    SaveBhfUser: "saveBhfUser", "/branches/saveBrancheUsers", "branchUserAccount", Save;
    SaveBhfInsurance: "saveBhfInsurance", "/branches/saveBrancheInsurances", "branchInsuranceInfo", Save;
    SaveItem: "saveItem", "/items/saveItems", "saveItem", Save;
    SaveItemComposition: "saveItemComposition", "/items/saveItemComposition", "saveItemComposition", Save;
    SelectItemList: "selectItemList", "/items/selectItems", "itemInfo", Lookup;
    SelectImportItemList: "selectImportItemList", "/imports/selectImportItems", "importedItemInfo", Lookup;
    UpdateImportItem: "updateImportItem", "/imports/updateImportItems", "importedItemConvertedInfo", Save;
    SaveTrnsSalesOsdc: "saveTrnsSalesOsdc", "/trnsSales/saveSales", "sendSalesTransaction", Sale;
    SelectInvoiceDetails: "selectInvoiceDetails", "/trnsSales/selectInvoiceDetails", "selectInvoiceDetail", Lookup;
    SelectTrnsPurchaseSalesList: "selectTrnsPurchaseSalesList", "/trnsPurchase/selectTrnsPurchaseSales", "getPurchaseTransactionInfo", Lookup;
    InsertTrnsPurchase: "insertTrnsPurchase", "/trnsPurchase/savePurchases", "sendPurchaseTransactionInfo", Save;
    SelectStockMoveList: "selectStockMoveList", "/stock/selectStockItems", "selectStockMoveLists", Lookup;
    InsertStockIo: "insertStockIO", "/stock/saveStockItems", "insert/stockIO", Save;
    SaveStockMaster: "saveStockMaster", "/stockMaster/saveStockMaster", "save/stockMaster", Save;
    SaveReportZ: "saveReportZ", "/report/saveReportZ", "saveReportZ", Save;
    CheckReportZ: "checkReportZ", "/report/checkReportZ", "checkReportZ", Lookup;
}

/// A typed endpoint: its name and the bodies it takes and gives.
pub trait Endpoint {
    const NAME: EndpointName;
    type Request: Serialize + DeserializeOwned + Send + Sync;
    type Response: Serialize + DeserializeOwned + Send;
}

macro_rules! typed_endpoints {
    ($($(#[$doc:meta])* $marker:ident = $name:ident($request:ty) -> $response:ty;)*) => {
        $(
            $(#[$doc])*
            pub struct $marker;
            impl Endpoint for $marker {
                const NAME: EndpointName = EndpointName::$name;
                type Request = $request;
                type Response = $response;
            }
        )*
    };
}

typed_endpoints! {
    /// Device initialisation: issues the `cmcKey`.
    InitDevice = SelectInitOsdcInfo(InitRequest) -> InitResponse;
    CodeLists = SelectCodeList(LastRequest) -> CodeListResponse;
    ItemClasses = SelectItemClsList(LastRequest) -> ItemClassListResponse;
    TaxpayerLookup = SelectCustomer(CustomerLookupRequest) -> CustomerLookupResponse;
    Branches = SelectBhfList(LastRequest) -> BranchListResponse;
    Notices = SelectNoticeList(LastRequest) -> NoticeListResponse;
    SaveCustomer = SaveBhfCustomer(SaveCustomerRequest) -> NoData;
    SaveUser = SaveBhfUser(SaveUserRequest) -> NoData;
    SaveInsurance = SaveBhfInsurance(SaveInsuranceRequest) -> NoData;
    SaveItemEndpoint = SaveItem(SaveItemRequest) -> NoData;
    SaveComposition = SaveItemComposition(SaveItemCompositionRequest) -> NoData;
    Items = SelectItemList(LastRequest) -> ItemListResponse;
    ImportItems = SelectImportItemList(LastRequest) -> ImportItemListResponse;
    UpdateImport = UpdateImportItem(UpdateImportItemRequest) -> NoData;
    /// Sign a sale or credit note.
    SignSale = SaveTrnsSalesOsdc(SaleRequest) -> SaleResponse;
    /// Fetch a signed sale by `invcNo`: recovery after a lost answer.
    InvoiceDetails = SelectInvoiceDetails(InvoiceDetailsRequest) -> InvoiceDetailsResponse;
    PurchaseSales = SelectTrnsPurchaseSalesList(LastRequest) -> PurchaseSalesListResponse;
    SavePurchase = InsertTrnsPurchase(PurchaseRequest) -> NoData;
    StockMoves = SelectStockMoveList(LastRequest) -> StockMoveListResponse;
    StockInOut = InsertStockIo(StockIoRequest) -> NoData;
    StockMaster = SaveStockMaster(StockMasterRequest) -> NoData;
    /// Close a day (Z). Irreversible.
    CloseDay = SaveReportZ(ReportRequest) -> DayReport;
    /// Read a day (X when open, the Z when closed). Changes nothing.
    ReadDay = CheckReportZ(ReportRequest) -> DayReport;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_names_one_endpoint_per_profile() {
        for profile in [Profile::Oscu, Profile::Vscu, Profile::GavaConnect] {
            let mut seen = std::collections::HashSet::new();
            for &name in EndpointName::ALL {
                let path = name.path(profile);
                assert!(path.starts_with('/'));
                assert!(seen.insert(path), "{path} twice under {profile:?}");
                assert_eq!(EndpointName::from_path(path, profile), Some(name), "{path}");
            }
        }
        // OSCU and VSCU paths never collide, so one server can serve both sets.
        for &name in EndpointName::ALL {
            assert_eq!(
                EndpointName::from_path(name.path(Profile::Vscu), Profile::Oscu),
                None
            );
        }
        assert_eq!(
            EndpointName::from_path("/trnsSales/saveSales", Profile::Vscu),
            Some(EndpointName::SaveTrnsSalesOsdc)
        );
        assert_eq!(EndpointName::from_path("/nope", Profile::Oscu), None);
    }
}
